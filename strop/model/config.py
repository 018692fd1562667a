"""The configuration of one STROP model (paper Sec. 2.1, Table 6): `ModelConfig` and `PRESETS`.

Design decisions
- One flat `ModelConfig` (pydantic, `extra="forbid"`, validated on construction). The preset
  is resolved while validating: architecture fields not given (or given as null, as old
  `config.json` files may hold) take the preset's value before field validation, so after
  construction every field holds an int and no component ever receives None. Any field set
  explicitly wins. The resolved values are what `config.json` stores, so a run never depends on
  preset tables changing later.
- The JSON stays flat (`config.json` compatibility, `--set model.k=...` keys); the typed
  sub-configs each component is built from (`transformer`, `quantizer`) are derived views,
  small frozen dataclasses defined beside their components.
- Presets are named instances of `Preset` (`PRESETS`), not copies of configs; a DINOv3
  teacher forces 16-pixel patches whatever the preset says.
- The paper leaves the loss weights, the diversity temperature and the dead-code threshold
  unstated; the defaults here are our choices.
- This module never imports `strop.model.network`, so `strop.training.config` (the run
  config) can use it without building the network; `strop.model` re-exports its names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop.model.generator import AttentionLayout, TransformerConfig
from strop.model.quantizer import QuantizerConfig
from strop.model.teachers import teacher_dim

__all__ = ["PRESETS", "ModelConfig", "Preset", "PresetName", "TeacherName"]


@dataclass(frozen=True)
class Preset:
    """Architecture defaults of one named preset (the fields `ModelConfig` takes from it)."""

    d: int
    layers: int
    heads: int
    ffn: int
    image_size: int
    patch_size: int
    l_max: int
    k: int
    code_dim: int
    decoder_width: int


PresetName = Literal["tiny", "S", "M"]

#: Largest codebook: the codebook and its EMA statistics live in memory and every image's
#: codes are compared with all of them; the paper's largest K is 1024 (Sec. 5.2).
MAX_K = 2**20

#: The field defaults below are the default preset's (S); `_fill_from_preset` replaces them
#: by the chosen preset's before validation, so they only document the S values.
_S = Preset(
    d=256,
    layers=8,
    heads=8,
    ffn=1024,
    image_size=224,
    patch_size=16,
    l_max=64,
    k=1024,
    code_dim=16,
    decoder_width=256,
)
#: Paper Table 6 for S and M (M is S made wider and deeper); `tiny` for CPU demos and tests.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        d=64,
        layers=2,
        heads=4,
        ffn=128,
        image_size=64,
        patch_size=8,
        l_max=16,
        k=64,
        code_dim=8,
        decoder_width=32,
    ),
    "S": _S,
    "M": replace(_S, d=512, layers=10, ffn=2048),
}
TeacherName = Literal["dinov3-s", "dinov3-b", "dinov3-l", "random-vit", "pixels"]


class ModelConfig(BaseModel):
    """Architecture, quantizer and loss constants of one STROP model.

    Architecture fields not given take the preset's value (`PRESETS`) at validation, so they
    are never None; the paper leaves the loss weights, the diversity temperature and the
    dead-code threshold unstated, so their defaults here are our choices.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    preset: PresetName = Field("S", description="architecture preset")
    d: int = Field(_S.d, gt=0, description="generator/interpreter width (preset)")
    layers: int = Field(
        _S.layers, gt=0, description="depth of generator and of interpreter (preset)"
    )
    heads: int = Field(_S.heads, gt=0, description="attention heads (preset)")
    ffn: int = Field(_S.ffn, gt=0, description="FFN width (preset)")
    teacher: TeacherName = Field("dinov3-s", description="frozen teacher")
    teacher_path: str | None = Field(
        None, description="local folder of DINOv3 weights (overrides the hub id)"
    )
    teacher_seed: int = Field(0, description="seed of the random-vit teacher's weights")
    image_size: int = Field(
        _S.image_size, gt=0, description="square input size S in pixels (preset)"
    )
    patch_size: int = Field(
        _S.patch_size, gt=0, description="teacher patch size (preset; 16 for DINOv3)"
    )
    l_max: int = Field(_S.l_max, gt=0, description="longest program L_max (preset)")
    l_min: int = Field(1, gt=0, description="shortest program L_min")
    k: int = Field(_S.k, ge=2, le=MAX_K, description="codebook size K (preset)")
    code_dim: int = Field(_S.code_dim, gt=0, description="code dimension d_c (preset)")
    ema_decay: float = Field(0.99, gt=0, lt=1, description="codebook EMA decay")
    ema_eps: float = Field(1e-5, gt=0, description="Laplace smoothing of cluster sizes")
    dead_code_threshold: float = Field(
        0.1, ge=0, description="EMA assignments/step below which a code is dead"
    )
    restart_reset_size: float = Field(
        1.0, gt=0, description="EMA cluster size given to a re-seeded code"
    )
    div_temperature: float = Field(
        0.1, gt=0, description="soft-assignment temperature of the diversity loss"
    )
    w_mse: float = Field(1.0, ge=0, description="MSE weight inside the align loss")
    w_commit: float = Field(0.25, ge=0, description="commitment loss weight")
    w_div: float = Field(0.1, ge=0, description="diversity loss weight after warmup")
    div_warmup_steps: int = Field(40_000, ge=0, description="linear warmup of w_div")
    w_len: float = Field(1.0, ge=0, description="length loss weight (phase 3 on)")
    w_pixel: float = Field(1.0, ge=0, description="pixel probe loss weight (its input is detached)")
    decoder_width: int = Field(
        _S.decoder_width, gt=0, description="channels after the pixel probe's stem (preset)"
    )
    attention: AttentionLayout = Field(
        "split", description="attention layout (see strop.model.generator)"
    )
    quality_head: bool = Field(
        False,
        description="also train the eps-conditioned length head (strop.model.quality_head; "
        "ours, not the paper's) for --length-mode quality:EPS",
    )
    residual_targets: bool = Field(
        False,
        description="align the field and the teacher after subtracting the training set's mean "
        "teacher field (label-free; computed before training and stored in the weights as "
        "`field_mean`, added back wherever the full field is read; ours, not the paper's, "
        "issue 27)",
    )
    foreground_weights: bool = Field(
        False,
        description="weight each patch's align error by the teacher's squared deviation from the "
        "mean field (mean 1 per image; label-free; needs residual_targets; ours, issue 27)",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        """Fill the architecture fields not given (or null) from the preset, before validation."""
        if not isinstance(data, dict):
            return data
        preset = PRESETS.get(str(data.get("preset", "S")))
        if preset is None:
            return data  # the `preset` field reports the unknown name
        defaults = asdict(preset)
        if str(data.get("teacher", "dinov3-s")).startswith("dinov3"):
            # DINOv3 checkpoints are patch-16 whatever the preset's default patch size says.
            defaults["patch_size"] = 16
        missing = {key: value for key, value in defaults.items() if data.get(key) is None}
        return {**data, **missing} if missing else data

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        problems = []
        if self.d % self.heads:
            problems.append(f"d={self.d} is not divisible by heads={self.heads}")
        if self.d % 4:
            problems.append(f"d={self.d} must be divisible by 4 (2D sine-cosine positions)")
        if self.image_size % self.patch_size:
            problems.append(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.image_size % 16:
            problems.append(
                f"image_size={self.image_size} must be divisible by 16 (the pixel probe's four x2 upsamplings)"
            )
        if self.l_min > self.l_max:
            problems.append(f"l_min={self.l_min} exceeds l_max={self.l_max}")
        if self.teacher.startswith("dinov3") and self.patch_size != 16:
            problems.append(
                f"teacher {self.teacher} has 16-pixel patches, got patch_size={self.patch_size}"
            )
        if self.foreground_weights and not self.residual_targets:
            problems.append(
                "foreground_weights needs residual_targets (its weights come from the mean field)"
            )
        if problems:
            raise ValueError("model config: " + "; ".join(problems))
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The named preset (`tiny`, `S`, `M`) with `overrides` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        return cls.model_validate({"preset": name, **overrides})

    @property
    def transformer(self) -> TransformerConfig:
        """The architecture the generator and the interpreter share (paper Table 6)."""
        return TransformerConfig(
            d=self.d, layers=self.layers, heads=self.heads, ffn=self.ffn, layout=self.attention
        )

    @property
    def quantizer(self) -> QuantizerConfig:
        """What the vector quantizer owns: widths, K and its EMA/restart/diversity constants."""
        return QuantizerConfig(
            d=self.d,
            code_dim=self.code_dim,
            k=self.k,
            decay=self.ema_decay,
            eps=self.ema_eps,
            dead_threshold=self.dead_code_threshold,
            reset_size=self.restart_reset_size,
            div_temperature=self.div_temperature,
        )

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def teacher_dim(self) -> int:
        return teacher_dim(self.teacher, self.patch_size)

    @property
    def bits_per_program(self) -> float:
        """The hard ceiling `L_max * log2(K)` bits."""
        return self.l_max * math.log2(self.k)

    def summary(self) -> str:
        return (
            f"preset {self.preset} (d={self.d}, {self.layers} layers, teacher {self.teacher}, "
            f"{self.image_size}px/{self.patch_size}, K={self.k}, L_max={self.l_max}, d_c={self.code_dim})"
        )
