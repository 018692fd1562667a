"""What every row of `python -m bench gpu` shares, made once per call: the scale (full or
the `--dry-run` toy), an image folder, teachers of the real DINOv3 shapes with seeded random
weights (saved as model folders, the code path real weights take) and their feature caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: preset -> the teacher shape it is paired with (paper Table 6: S on ViT-S, M on ViT-B).
TEACHERS = {"S": "dinov3-s", "M": "dinov3-b"}


@dataclass(frozen=True)
class Scale:
    """How big a run is: the full GPU measurement or the toy dry run."""

    image_size: int
    batches: dict[str, tuple[int, ...]]
    model_sets: tuple[str, ...] = ()
    toy_teacher: bool = False
    warmup_steps: int = 3
    timed_s: float = 6.0
    min_steps: int = 5
    max_steps: int = 200
    sync_steps: int = 3


FULL = Scale(224, {"S": (512, 256, 128, 64), "M": (256, 128, 64, 32)})
DRY = Scale(
    32,
    {"S": (4, 2), "M": (4, 2)},
    model_sets=(
        "model.d=32",
        "model.layers=1",
        "model.heads=2",
        "model.ffn=64",
        "model.l_max=8",
        "model.k=32",
        "model.code_dim=8",
        "model.decoder_width=16",
    ),
    toy_teacher=True,
    warmup_steps=1,
    timed_s=0.0,
    min_steps=2,
    max_steps=2,
    sync_steps=1,
)


@dataclass
class Setup:
    """What every row shares: device, data folder, teacher folders and feature caches."""

    scale: Scale
    device: torch.device
    root: Path
    data: Path
    teachers: dict[str, Path]
    caches: dict[str, Path]
    compile_backend: str | None


# --------------------------------------------------------------------------- setup


def _teacher_folder(name: str, scale: Scale, out: Path) -> Path:
    """A DINOv3 ViT of `name`'s shape with seeded random weights, saved as a model folder."""
    from transformers import DINOv3ViTModel

    from strop.model.teachers import teacher_config, vit_config

    if scale.toy_teacher:
        config = vit_config(32, 1, 2, 64, scale.image_size, 16)
    else:
        config = teacher_config(name, scale.image_size, 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DINOv3ViTModel(config)
    folder = out / name
    model.save_pretrained(folder)
    return folder


def _image_folder(out: Path, n: int, size: int) -> Path:
    """`n` smooth random RGB PNGs under out/train (an image-folder dataset, no scenes)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    train = out / "train"
    train.mkdir(parents=True)
    for i in range(n):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        image.save(train / f"img_{i:05d}.png")
    return out


def prepare(scale: Scale, device: torch.device, root: Path, compile_backend: str | None) -> Setup:
    from transformers.utils import logging as transformers_logging

    from strop.data.datasets import build_dataset
    from strop.model.feature_cache import write_features
    from strop.model.teachers import build_teacher

    transformers_logging.disable_progress_bar()  # one bar per teacher load would bury the table
    n_images = max(max(b) for b in scale.batches.values())
    data = _image_folder(root / "data", n_images, scale.image_size)
    teachers, caches = {}, {}
    for name in sorted(set(TEACHERS.values())):
        teachers[name] = _teacher_folder(name, scale, root / "teachers")
        teacher = build_teacher(name, teachers[name], scale.image_size, 16)
        caches[name] = root / "caches" / name
        write_features(
            build_dataset(data, "train", scale.image_size),
            teacher,
            caches[name],
            "train",
            scale.image_size,
            batch_size=64,
            device=device,
            progress=False,
            source=str(data),
        )
        del teacher
    return Setup(scale, device, root, data, teachers, caches, compile_backend)
