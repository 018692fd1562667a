"""Frozen teachers (paper Sec. 2.1 "Encoder"): images in [0, 1] -> patch tokens (B, P, D).

| name         | what                                         | D          | patch |
| ------------ | -------------------------------------------- | ---------- | ----- |
| `dinov3-s`   | facebook/dinov3-vits16-pretrain-lvd1689m     | 384        | 16    |
| `dinov3-b`   | facebook/dinov3-vitb16-pretrain-lvd1689m     | 768        | 16    |
| `dinov3-l`   | facebook/dinov3-vitl16-pretrain-lvd1689m     | 1024       | 16    |
| `random-vit` | the DINOv3 ViT-S architecture, seeded random | 384        | any   |
| `pixels`     | ImageNet-normalised patch pixels             | 3 * p * p  | any   |

Design decisions
- DINOv3 weights are loaded with `local_files_only=True`: the hub repositories are gated and
  nothing is downloaded at run time; and with `use_safetensors=True`: a teacher folder's
  `pytorch_model.bin` is a pickle (code), never read. A missing model raises `TeacherNotFoundError`, one
  sentence naming the id or folder and the two ways to provide it.
- The processor's normalisation (mean/std from `preprocessor_config.json`, ImageNet's when the
  file is absent) is applied inside the teacher, so every caller passes plain [0, 1] images.
- Patch tokens are `last_hidden_state[:, 1 + num_register_tokens:]`: CLS and the register
  tokens are dropped.
- Frozen for good: `requires_grad_(False)`, and `train()` is overridden to stay in eval mode,
  because in training mode DINOv3 jitters/rescales its RoPE coordinates and the targets would
  change from step to step. The forward runs under `torch.no_grad()`, not `inference_mode()`:
  inference tensors cannot be saved for backward, and the generator's first LayerNorm saves
  its input.
- Offline teachers carry their name (`teacher_name`) into every output so no one mistakes them
  for DINO. `random-vit` is seeded through a forked RNG, so building it leaves the caller's
  random state untouched and two builds are identical.
- `pixels` normalises with ImageNet mean/std (globally, not per patch): per-patch
  normalisation would erase the absolute colours that CLEVR attributes are made of.
- `teacher_config` describes each architecture without weights, so `strop model-info` counts
  parameters and FLOPs from configs alone (on the meta device).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TEACHER_NAMES = ("dinov3-s", "dinov3-b", "dinov3-l", "random-vit", "pixels")
DINOV3_IDS = {
    "dinov3-s": "facebook/dinov3-vits16-pretrain-lvd1689m",
    "dinov3-b": "facebook/dinov3-vitb16-pretrain-lvd1689m",
    "dinov3-l": "facebook/dinov3-vitl16-pretrain-lvd1689m",
}
#: (hidden, layers, heads, ffn) of the DINOv3 ViTs (S/16, B/16, L/16), 4 register tokens each.
_VIT_SIZES = {
    "dinov3-s": (384, 12, 6, 1536),
    "dinov3-b": (768, 12, 12, 3072),
    "dinov3-l": (1024, 24, 16, 4096),
    "random-vit": (384, 12, 6, 1536),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TeacherNotFoundError(FileNotFoundError):
    """The teacher's weights are not available locally; the message says how to provide them."""


def teacher_dim(name: str, patch_size: int = 16) -> int:
    """Width D of a teacher's tokens, from its name alone."""
    if name == "pixels":
        return 3 * patch_size * patch_size
    return _VIT_SIZES[name][0]


def teacher_config(name: str, image_size: int = 224, patch_size: int = 16):
    """The `DINOv3ViTConfig` of a ViT teacher (no weights); None for `pixels`."""
    if name == "pixels":
        return None
    return vit_config(*_VIT_SIZES[name], image_size, patch_size)


def vit_config(
    hidden: int, layers: int, heads: int, ffn: int, image_size: int, patch_size: int
) -> Any:
    """A `DINOv3ViTConfig` of this shape, with the 4 register tokens DINOv3 checkpoints have
    (the config's default is 0)."""
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        num_register_tokens=4,
        patch_size=patch_size,
        image_size=image_size,
    )


class Teacher(nn.Module):
    """Base class: frozen, always in eval mode, `forward(images in [0,1]) -> (B, P, D)`."""

    teacher_name: str
    dim: int
    patch_size: int
    mean: torch.Tensor  # (1, 3, 1, 1), set by `_normalise_with`
    std: torch.Tensor

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    def grid(self, image_size: int) -> tuple[int, int]:
        """(rows, cols) of the patch grid for square images of `image_size` pixels."""
        if image_size % self.patch_size != 0:
            raise ValueError(
                f"teacher {self.teacher_name}: image size {image_size} is not divisible by its patch size {self.patch_size}"
            )
        side = image_size // self.patch_size
        return side, side

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def _normalise_with(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Keep the per-channel input normalisation as buffers that follow `.to(device)` and
        stay out of state dicts (non-persistent): the one place both teachers set it."""
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (B, 3, H, W) in [0, 1], checked, then normalised with `mean` and `std`."""
        self._check(images)
        return (images - self.mean) / self.std

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"teacher {self.teacher_name}: expected images (B, 3, H, W), got {tuple(images.shape)}"
            )
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"teacher {self.teacher_name}: image size {h}x{w} is not divisible by the patch size {self.patch_size}"
            )


class ViTTeacher(Teacher):
    """A `transformers` DINOv3ViTModel with its normalisation; patch tokens only."""

    def __init__(self, model: nn.Module, name: str, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        super().__init__()
        self.model = model
        self.teacher_name = name
        # A transformers PretrainedConfig: untyped here (nn.Module types attributes as tensors).
        config: Any = model.config
        self.dim = int(config.hidden_size)
        patch = config.patch_size
        self.patch_size = patch if isinstance(patch, int) else patch[0]
        self.n_prefix = 1 + int(config.num_register_tokens)
        self._normalise_with(mean, std)
        self._freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=self._normalised(images)).last_hidden_state
        return hidden[:, self.n_prefix :]


class PixelTeacher(Teacher):
    """ImageNet-normalised patch pixels: (B, P, 3 * p * p), channel-major inside a patch."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.teacher_name = "pixels"
        self.patch_size = patch_size
        self.dim = 3 * patch_size * patch_size
        self._normalise_with(IMAGENET_MEAN, IMAGENET_STD)
        self._freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self._normalised(images)
        # unfold: (B, 3*p*p, P) with patches in row-major order, like a ViT's patch grid.
        return F.unfold(pixels, kernel_size=self.patch_size, stride=self.patch_size).transpose(1, 2)


class ShapeOnlyTeacher(PixelTeacher):
    """A weightless stand-in with a teacher's name, width and patch size: what a model built
    on the meta device needs to know of its teacher (`strop model-info`, and checking a
    weights file's shapes against a config before anything is allocated)."""

    def __init__(self, name: str, patch_size: int) -> None:
        super().__init__(patch_size)
        self.teacher_name = name
        self.dim = teacher_dim(name, patch_size)


def _normalisation(folder: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        return tuple(cfg.get("image_mean", IMAGENET_MEAN)), tuple(
            cfg.get("image_std", IMAGENET_STD)
        )
    return IMAGENET_MEAN, IMAGENET_STD


def _snapshot_folder(model_id: str) -> Path | None:
    """The local snapshot folder of a hub id, if its config is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    found = try_to_load_from_cache(model_id, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def load_dinov3(name: str, path: str | Path | None = None) -> ViTTeacher:
    """A pretrained DINOv3 teacher from a local folder or the local Hugging Face cache."""
    from transformers import DINOv3ViTModel

    source = str(path) if path is not None else DINOV3_IDS[name]
    how = (
        f"teacher {name}: no DINOv3 weights at {source!r}; "
        if path is not None
        else f"teacher {name}: {source} is not in the local Hugging Face cache; "
    )
    how += (
        f"the repo is gated, so accept its licence on huggingface.co, run `huggingface-cli login` and "
        f"`huggingface-cli download {DINOV3_IDS[name]}`, or pass a folder with config.json and "
        "model.safetensors (--teacher-path, or --set model.teacher_path=DIR for training), or use --teacher random-vit or pixels offline"
    )
    if path is not None and not Path(path).is_dir():
        raise TeacherNotFoundError(how)
    try:
        # safetensors only: a folder's pytorch_model.bin is a pickle, and unpickling runs code
        model = DINOv3ViTModel.from_pretrained(source, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise TeacherNotFoundError(how) from err
    folder = Path(path) if path is not None else _snapshot_folder(source)
    mean, std = _normalisation(folder)
    return ViTTeacher(model, name, mean, std)


def random_vit(image_size: int = 224, patch_size: int = 16, seed: int = 0) -> ViTTeacher:
    """The DINOv3 ViT-S architecture with seeded random weights (an offline stand-in)."""
    from transformers import DINOv3ViTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DINOv3ViTModel(teacher_config("random-vit", image_size, patch_size))
    return ViTTeacher(model, "random-vit")


def build_teacher(
    name: str,
    path: str | Path | None = None,
    image_size: int = 224,
    patch_size: int = 16,
    seed: int = 0,
) -> Teacher:
    """The frozen teacher called `name` (see the table in the module docstring)."""
    if name not in TEACHER_NAMES:
        raise ValueError(f"unknown teacher {name!r}; expected one of {', '.join(TEACHER_NAMES)}")
    if name == "pixels":
        return PixelTeacher(patch_size)
    if name == "random-vit":
        return random_vit(image_size, patch_size, seed)
    if patch_size != 16:
        raise ValueError(
            f"teacher {name}: DINOv3 uses 16-pixel patches, got patch_size={patch_size}"
        )
    return load_dinov3(name, path)


def count_teacher_parameters(name: str, image_size: int = 224, patch_size: int = 16) -> int:
    """Parameters of a teacher from its config alone (built on the meta device, no weights)."""
    cfg = teacher_config(name, image_size, patch_size)
    if cfg is None:
        return 0
    from transformers import DINOv3ViTModel

    with torch.device("meta"):
        model = DINOv3ViTModel(cfg)
    return sum(p.numel() for p in model.parameters())


def teacher_flops(name: str, image_size: int = 224, patch_size: int = 16) -> int:
    """Analytic forward matmul FLOPs per image of a teacher (2 per multiply-add)."""
    cfg = teacher_config(name, image_size, patch_size)
    if cfg is None:
        return 0
    hidden, layers, _, ffn = _VIT_SIZES[name]
    p = (image_size // patch_size) ** 2
    t = p + 1 + cfg.num_register_tokens
    patch_embed = 2 * p * 3 * patch_size * patch_size * hidden
    per_layer = 2 * t * hidden * (4 * hidden + 2 * ffn) + 2 * 2 * t * t * hidden
    return patch_embed + layers * per_layer
