"""STROP, the whole model (paper Sec. 2.1, Fig. 2): config, presets, and the `Strop` module.

    images -> Teacher (frozen) -> F (B, P, D)
    F -> Generator -> z (B, L_max, d) -> VectorQuantizer -> tokens, codes
    F -> LengthHead (detached) -> L_hat
    tokens[:L] -> Interpreter -> F_hat (B, P, D)        trained against F
    sg(F_hat) -> PixelDecoder -> image                  inspection only

Design decisions
- One flat `ModelConfig` (pydantic, `extra="forbid"`, validated on construction) with the
  architecture fields defaulting to the preset: `ModelConfig(preset="S")` is STROP-S, and any
  field set explicitly wins. The resolved values are what `config.json` stores, so a run never
  depends on preset tables changing later.
- The teacher is held outside the module tree (`object.__setattr__`): it is not in
  `state_dict()`, not in `parameters()` (so the optimiser and DDP never see it), and `.train()`
  cannot reach it. `_apply` forwards `.to()/.cuda()/.half()` to it so it follows the model.
- The public API is a set of stage methods (`teacher_features`, `generate`, `predict_length`,
  `interpret_tokens`, `decode_pixels`, quantizer losses/updates) so the trainer's step stays
  flat and the curriculum can probe several prefix lengths of the same program; `forward` runs
  the hot path (generate + interpret at given lengths) for `torch.compile`.
- `encode`/`interpret` are the inference API: `interpret` runs each distinct length on its
  prefix alone (no padded positions are ever passed at inference, as the paper specifies).
- Parameter counts follow the paper's definition (Table 6): trainable = generator,
  interpreter, quantizer projections and length head; the pixel probe is counted separately;
  total = trainable + teacher. FLOPs are analytic matmul counts (2 per multiply-add) of one
  forward at the full L_max, in the split attention layout, excluding the teacher and the pixel
  probe; `flops_per_image(include_teacher=True)` adds the teacher forward. A test checks the
  count against `torch.utils.flop_counter.FlopCounterMode`.
- The model records its own config as `_extra_state` in the state_dict, so
  `load_state_dict_checked` can say "this checkpoint is preset M on dinov3-b" instead of
  printing a list of shape mismatches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from strop.generator import Generator, block_flops, init_weights
from strop.interpreter import Interpreter, prefix_mask
from strop.length_head import LengthHead, round_lengths
from strop.pixel_decoder import PixelDecoder
from strop.quantizer import QuantizerOut, VectorQuantizer
from strop.teachers import (
    Teacher,
    build_teacher,
    count_teacher_parameters,
    teacher_dim,
    teacher_flops,
)

__all__ = [
    "PRESETS",
    "ForwardOut",
    "GenOut",
    "ModelConfig",
    "Strop",
    "build_model",
    "count_parameters",
    "prefix_mask",
    "round_lengths",
]

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
        "split", description="attention layout (see strop.generator)"
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


@dataclass
class GenOut:
    """The generator's program for a batch.

    tokens: (B, L_max, d) straight-through quantised tokens (after the d_c -> d projection).
    codes: (B, L_max) long code indices (every position; the active prefix is decided later).
    z_e: (B, L_max, d_c) fp32 normalised pre-quantisation vectors (with gradient).
    z_q: (B, L_max, d_c) fp32 selected unit codes (no gradient).
    raw: (B, L_max, d) the generator's query outputs before the quantizer.
    """

    tokens: torch.Tensor
    codes: torch.Tensor
    z_e: torch.Tensor
    z_q: torch.Tensor
    raw: torch.Tensor

    @property
    def quantized(self) -> QuantizerOut:
        return QuantizerOut(tokens=self.tokens, codes=self.codes, z_e=self.z_e, z_q=self.z_q)


@dataclass
class ForwardOut:
    """`Strop.forward`: the program, the interpreted field at the given lengths, and L_hat."""

    gen: GenOut
    field: torch.Tensor
    l_hat: torch.Tensor


class Strop(nn.Module):
    """The STROP tokenizer. Build with `build_model(cfg)`; see the module docstring."""

    def __init__(self, cfg: ModelConfig, teacher: Teacher | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if teacher is None:
            teacher = build_teacher(
                cfg.teacher, cfg.teacher_path, cfg.image_size, cfg.patch_size, cfg.teacher_seed
            )
        # Outside the module tree on purpose: not in state_dict, parameters() or train().
        object.__setattr__(self, "teacher", teacher)
        self.teacher_name = teacher.teacher_name
        dim = teacher.dim
        grid = teacher.grid(cfg.image_size)
        self.grid = grid
        self.generator = Generator(
            dim, cfg.d, cfg.layers, cfg.heads, cfg.ffn, cfg.l_max, grid, cfg.attention
        )
        self.quantizer = VectorQuantizer(
            cfg.d,
            cfg.code_dim,
            cfg.k,
            decay=cfg.ema_decay,
            eps=cfg.ema_eps,
            dead_threshold=cfg.dead_code_threshold,
            reset_size=cfg.restart_reset_size,
            div_temperature=cfg.div_temperature,
        )
        self.length_head = LengthHead(cfg.d, cfg.l_max)
        self.interpreter = Interpreter(
            cfg.d, cfg.layers, cfg.heads, cfg.ffn, grid[0] * grid[1], dim, cfg.l_max, cfg.attention
        )
        self.pixel_decoder = PixelDecoder(dim, grid, cfg.image_size, cfg.decoder_width)
        for part in (self.generator, self.quantizer, self.length_head, self.interpreter):
            part.apply(init_weights)

    # ------------------------------------------------------------------ plumbing

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def get_extra_state(self) -> dict[str, Any]:
        return {"model_config": self.cfg.model_dump(), "teacher_name": self.teacher_name}

    def set_extra_state(self, state: Any) -> None:
        # The config itself is checked by load_state_dict_checked; nothing to restore here.
        pass

    @property
    def device(self) -> torch.device:
        return self.generator.proj_in.weight.device

    # ------------------------------------------------------------------ stages

    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen teacher tokens (B, P, D) of images (B, 3, S, S) in [0, 1]."""
        size = self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(
                f"images: expected shape (B, 3, {size}, {size}) for {self.cfg.summary()}, got {tuple(images.shape)}"
            )
        with torch.no_grad():
            return self.teacher(images).float()

    def _check_feats(self, feats: torch.Tensor) -> None:
        expected = (self.interpreter.grid_queries.shape[0], self.interpreter.proj_out.out_features)
        if feats.ndim != 3 or tuple(feats.shape[1:]) != expected:
            raise ValueError(
                f"teacher features: expected (B, {expected[0]}, {expected[1]}) for teacher "
                f"{self.teacher_name}, got {tuple(feats.shape)}"
            )

    def generate(self, feats: torch.Tensor) -> GenOut:
        """The full-length quantised program of teacher features (B, P, D)."""
        self._check_feats(feats)
        raw = self.generator(feats)
        q = self.quantizer(raw)
        return GenOut(tokens=q.tokens, codes=q.codes, z_e=q.z_e, z_q=q.z_q, raw=raw)

    def predict_length(self, feats: torch.Tensor) -> torch.Tensor:
        """L_hat (B,) float in (0, L_max), from the detached pooled projection."""
        with torch.no_grad():
            pooled = self.generator.project(feats).mean(dim=1)
        return self.length_head(pooled)

    def head_lengths(self, feats: torch.Tensor) -> torch.Tensor:
        """Integer inference lengths `clip(round(L_hat), L_min, L_max)` (B,) long."""
        return round_lengths(self.predict_length(feats), self.cfg.l_min, self.cfg.l_max)

    def interpret_tokens(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Field (B, P, D) from full-length tokens (B, L_max, d), positions >= lengths masked."""
        return self.interpreter(tokens, lengths)

    def decode_pixels(self, field: torch.Tensor) -> torch.Tensor:
        """Pixel probe image (B, 3, S, S) in [0, 1] of a field; its input is detached."""
        return self.pixel_decoder(field)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> ForwardOut:
        """The training hot path: program, field at `lengths` (masked, static shapes), L_hat."""
        gen = self.generate(feats)
        return ForwardOut(
            gen=gen,
            field=self.interpret_tokens(gen.tokens, lengths),
            l_hat=self.predict_length(feats),
        )

    # ------------------------------------------------------------------ quantizer

    def quantizer_losses(self, gen: GenOut, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted `commit_loss` and `diversity_loss` over active positions (B, L_max) bool."""
        return self.quantizer.losses(gen.quantized, active)

    def update_codebook(self, gen: GenOut, active: torch.Tensor) -> None:
        """EMA codebook step from active positions (no grad, fp32, DDP-summed)."""
        self.quantizer.update_codebook(gen.quantized, active)

    def restart_dead_codes(self, gen: GenOut, active: torch.Tensor) -> int:
        """Re-seed dead codes from active batch vectors (outside compiled regions)."""
        return self.quantizer.restart_dead_codes(gen.quantized, active)

    # ------------------------------------------------------------------ inference API

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, length_mode: str = "head"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Programs of images: codes (B, L_max) long, -1 past each length, and lengths (B,)."""
        return self.encode_features(self.teacher_features(images), length_mode)

    @torch.no_grad()
    def encode_features(
        self, feats: torch.Tensor, length_mode: str = "head"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` from teacher features (e.g. a feature cache)."""
        gen = self.generate(feats)
        if length_mode == "head":
            lengths = self.head_lengths(feats)
        elif length_mode == "fixed":
            lengths = torch.full(
                (feats.shape[0],), self.cfg.l_max, dtype=torch.long, device=feats.device
            )
        else:
            raise ValueError(f"length_mode must be 'head' or 'fixed', got {length_mode!r}")
        codes = gen.codes.masked_fill(~prefix_mask(lengths, self.cfg.l_max), -1)
        return codes, lengths

    def _check_program(self, codes: torch.Tensor, lengths: torch.Tensor) -> None:
        l_max, k = self.cfg.l_max, self.cfg.k
        if codes.ndim != 2 or codes.dtype.is_floating_point or codes.shape[1] > l_max:
            raise ValueError(
                f"codes: expected an integer tensor (B, <= {l_max}), got {codes.dtype} {tuple(codes.shape)}"
            )
        if lengths.shape != (codes.shape[0],):
            raise ValueError(
                f"lengths: expected shape ({codes.shape[0]},), got {tuple(lengths.shape)}"
            )
        bad = (lengths < 1) | (lengths > min(l_max, codes.shape[1]))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"lengths: row {i} has length {int(lengths[i])}, expected 1..{min(l_max, codes.shape[1])}"
            )
        active = prefix_mask(lengths, codes.shape[1])
        bad_codes = active & ((codes < 0) | (codes >= k))
        if bad_codes.any():
            i, j = (int(v) for v in bad_codes.nonzero()[0])
            raise ValueError(
                f"codes: row {i}, position {j} holds {int(codes[i, j])}, expected 0..{k - 1} (K={k})"
            )

    @torch.no_grad()
    def interpret(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Field (B, P, D) of stored programs; each length runs on its prefix alone."""
        codes = codes.to(self.device)
        lengths = lengths.to(self.device).long()
        self._check_program(codes, lengths)
        field = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            tokens = self.quantizer.embed_codes(codes[rows, :length])
            part = self.interpreter(tokens, None)
            if field is None:
                field = part.new_empty(codes.shape[0], *part.shape[1:])
            field[rows] = part
        return field

    # ------------------------------------------------------------------ checkpoints

    def load_state_dict_checked(self, state_dict: dict[str, Any]) -> None:
        """`load_state_dict` that names the preset/teacher or the shape that does not match."""
        extra = state_dict.get("_extra_state")
        if isinstance(extra, dict) and "model_config" in extra:
            theirs = ModelConfig(**extra["model_config"])
            keys = (
                "preset",
                "d",
                "layers",
                "heads",
                "ffn",
                "teacher",
                "image_size",
                "patch_size",
                "l_max",
                "k",
                "code_dim",
            )
            diff = [
                f"{key} {getattr(theirs, key)} vs {getattr(self.cfg, key)}"
                for key in keys
                if getattr(theirs, key) != getattr(self.cfg, key)
            ]
            if diff:
                raise ValueError(
                    f"checkpoint is {theirs.summary()}, this model is {self.cfg.summary()}: "
                    + ", ".join(diff)
                )
        own = self.state_dict()
        for key, value in own.items():
            if key == "_extra_state":
                continue
            if key not in state_dict:
                raise ValueError(
                    f"checkpoint lacks {key} ({self.cfg.summary()}); was it saved from another model?"
                )
            if tuple(state_dict[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"checkpoint {key} has shape {tuple(state_dict[key].shape)}, this model "
                    f"({self.cfg.summary()}) expects {tuple(value.shape)}: it was saved from another preset"
                )
        unexpected = sorted(set(state_dict) - set(own))
        if unexpected:
            raise ValueError(
                f"checkpoint has keys this model lacks, e.g. {unexpected[0]} ({self.cfg.summary()})"
            )
        self.load_state_dict(state_dict)

    # ------------------------------------------------------------------ accounting

    def flops_per_image(self, include_teacher: bool = False) -> int:
        """Analytic forward matmul FLOPs per image at L = L_max (see module docstring)."""
        flops = model_flops(self.cfg, self.interpreter.proj_out.out_features)
        if include_teacher:
            flops += teacher_flops(self.cfg.teacher, self.cfg.image_size, self.cfg.patch_size)
        return flops


def model_flops(cfg: ModelConfig, dim: int | None = None) -> int:
    """Forward matmul FLOPs per image of generator, quantizer, length head and interpreter."""
    dim = dim or cfg.teacher_dim
    p, n_q, d = cfg.n_patches, cfg.l_max, cfg.d
    project = 2 * p * dim * d
    generator = project + cfg.layers * block_flops(p, n_q, d, cfg.ffn, causal_queries=True)
    quantizer = 2 * n_q * (d * cfg.code_dim + cfg.code_dim * cfg.k + cfg.code_dim * d)
    length_head = project + 2 * (d * d + d)
    interpreter = (
        cfg.layers * block_flops(n_q, p, d, cfg.ffn, causal_queries=False) + 2 * p * d * dim
    )
    return int(generator + quantizer + length_head + interpreter)


def build_model(cfg: ModelConfig, teacher: Teacher | None = None) -> Strop:
    """A STROP model for `cfg`; the teacher is built from the config unless one is given."""
    return Strop(cfg, teacher)


def count_parameters(model: Strop) -> dict[str, int]:
    """Parameter counts by the paper's definition (Table 6).

    trainable: generator + interpreter + quantizer projections + length head;
    pixel_probe: the pixel decoder; teacher: the frozen teacher; total: trainable + teacher.
    """

    def n(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    trainable = (
        n(model.generator) + n(model.interpreter) + n(model.quantizer) + n(model.length_head)
    )
    teacher = n(model.teacher)
    return {
        "trainable_params": trainable,
        "pixel_probe_params": n(model.pixel_decoder),
        "teacher_params": teacher,
        "total_params": trainable + teacher,
    }


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """`strop model-info` numbers from the config alone: the model is built on the meta device
    with a weightless stand-in teacher and the teacher is counted from its architecture config."""
    from strop.teachers import PixelTeacher

    class _ShapeOnlyTeacher(PixelTeacher):
        def __init__(self) -> None:
            super().__init__(cfg.patch_size)
            self.teacher_name = cfg.teacher
            self.dim = cfg.teacher_dim

    with torch.device("meta"):
        model = Strop(cfg, teacher=_ShapeOnlyTeacher())
    counts = count_parameters(model)
    counts["teacher_params"] = count_teacher_parameters(cfg.teacher, cfg.image_size, cfg.patch_size)
    counts["total_params"] = counts["trainable_params"] + counts["teacher_params"]
    teacher_cost = teacher_flops(cfg.teacher, cfg.image_size, cfg.patch_size)
    return {
        "preset": cfg.preset,
        "teacher": cfg.teacher,
        "d": cfg.d,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "ffn": cfg.ffn,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "n_patches": cfg.n_patches,
        "teacher_dim": cfg.teacher_dim,
        "k": cfg.k,
        "l_max": cfg.l_max,
        "code_dim": cfg.code_dim,
        **counts,
        "flops_per_image": model_flops(cfg),
        "teacher_flops_per_image": teacher_cost,
        "bits_per_program": cfg.bits_per_program,
    }
