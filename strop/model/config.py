"""The configuration of one STROP model (paper Sec. 2.1, Table 6): `ModelConfig` and `PRESETS`.

Design decisions
- One flat `ModelConfig` (pydantic, `extra="forbid"`, validated on construction) with the
  architecture fields defaulting to the preset: `ModelConfig(preset="S")` is STROP-S, and any
  field set explicitly wins. The resolved values are what `config.json` stores, so a run never
  depends on preset tables changing later.
- Presets are named tables of architecture defaults (`PRESETS`), not copies of configs; a
  DINOv3 teacher forces 16-pixel patches whatever the preset says.
- The paper leaves the loss weights, the diversity temperature and the dead-code threshold
  unstated; the defaults here are our choices.
- The config lives apart from `strop.model` so that `strop.training.config` (the run config) can use it
  without importing the network; `strop.model` re-exports every name here.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from strop.model.teachers import teacher_dim

__all__ = ["PRESETS", "ModelConfig", "TeacherName"]

#: Architecture defaults per preset (paper Table 6 for S and M; `tiny` for CPU demos and tests).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
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
    "S": dict(
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
    ),
    "M": dict(
        d=512,
        layers=10,
        heads=8,
        ffn=2048,
        image_size=224,
        patch_size=16,
        l_max=64,
        k=1024,
        code_dim=16,
        decoder_width=256,
    ),
}
TeacherName = Literal["dinov3-s", "dinov3-b", "dinov3-l", "random-vit", "pixels"]


class ModelConfig(BaseModel):
    """Architecture, quantizer and loss constants of one STROP model.

    Fields left as None take the preset's value (`PRESETS`); the paper leaves the loss
    weights, the diversity temperature and the dead-code threshold unstated, so their defaults
    here are our choices.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: Literal["tiny", "S", "M"] = Field("S", description="architecture preset")
    d: int | None = Field(None, gt=0, description="generator/interpreter width")
    layers: int | None = Field(None, gt=0, description="depth of generator and of interpreter")
    heads: int | None = Field(None, gt=0, description="attention heads")
    ffn: int | None = Field(None, gt=0, description="FFN width")
    teacher: TeacherName = Field("dinov3-s", description="frozen teacher")
    teacher_path: str | None = Field(
        None, description="local folder of DINOv3 weights (overrides the hub id)"
    )
    teacher_seed: int = Field(0, description="seed of the random-vit teacher's weights")
    image_size: int | None = Field(None, gt=0, description="square input size S in pixels")
    patch_size: int | None = Field(None, gt=0, description="teacher patch size (16 for DINOv3)")
    l_max: int | None = Field(None, gt=0, description="longest program L_max")
    l_min: int = Field(1, gt=0, description="shortest program L_min")
    k: int | None = Field(None, ge=2, description="codebook size K")
    code_dim: int | None = Field(None, gt=0, description="code dimension d_c")
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
    decoder_width: int | None = Field(
        None, gt=0, description="channels after the pixel probe's stem"
    )
    attention: Literal["split", "masked"] = Field(
        "split", description="attention layout (see strop.model.generator)"
    )

    @model_validator(mode="before")
    @classmethod
    def _dinov3_patch(cls, data: Any) -> Any:
        # DINOv3 checkpoints are patch-16 whatever the preset's default patch size says.
        if (
            isinstance(data, dict)
            and str(data.get("teacher", "")).startswith("dinov3")
            and data.get("patch_size") is None
        ):
            data = {**data, "patch_size": 16}
        return data

    @model_validator(mode="after")
    def _resolve(self) -> ModelConfig:
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                # object.__setattr__ avoids re-running validation once per filled field.
                object.__setattr__(self, key, value)
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
        if problems:
            raise ValueError("model config: " + "; ".join(problems))
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The named preset (`tiny`, `S`, `M`) with `overrides` applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
        return cls(preset=name, **overrides)

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
