"""STROP, the whole model (paper Sec. 2.1, Fig. 2): the `Strop` module and `build_model`.

    images -> Teacher (frozen) -> F (B, P, D)
    F -> Generator -> z (B, L_max, d) -> VectorQuantizer -> tokens, codes
    F -> LengthHead (detached) -> L_hat
    tokens[:L] -> Interpreter -> F_hat (B, P, D)        trained against F
    sg(F_hat) -> PixelDecoder -> image                  inspection only

The configuration (`ModelConfig`, `PRESETS`) lives in `strop.model.config`, the cost
accounting (`count_parameters`, `model_flops`) in `strop.model.cost` and the weightless
`describe` in `strop.model.info`; the package `strop.model` re-exports the public names.

Design decisions
- The teacher is held outside the module tree (`object.__setattr__`): it is not in
  `state_dict()`, not in `parameters()` (so the optimiser and DDP never see it), and `.train()`
  cannot reach it. `_apply` forwards `.to()/.cuda()/.half()` to it so it follows the model.
- The public API is a set of stage methods (`teacher_features`, `generate`, `predict_length`,
  `interpret_tokens`, `decode_pixels`, quantizer losses/updates) so the trainer's step stays
  flat and the curriculum can probe several prefix lengths of the same program; `forward` runs
  the hot path (generate + interpret at given lengths) for `torch.compile`.
- `encode`/`interpret` are the inference API: `interpret` runs each distinct length on its
  prefix alone (no padded positions are ever passed at inference, as the paper specifies).
- `flops_per_image` reports the analytic FLOPs of `strop.model.cost` (the trainer logs MFU
  from it); parameter counts and FLOPs follow the paper's definitions described there.
- `save_pretrained`/`from_pretrained`/`push_to_hub`/`from_run` come from
  `strop.model.pretrained.PretrainedMixin` (model.safetensors + config.json + model card).
- The model records its own config as `_extra_state` in the state_dict, so
  `load_state_dict_checked` can say "this checkpoint is preset M on dinov3-b" instead of
  printing a list of shape mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from strop.model.boundary import check_finite_rows, check_images, check_programs
from strop.model.config import ModelConfig
from strop.model.cost import model_flops
from strop.model.generator import Generator, init_weights
from strop.model.interpreter import Interpreter, prefix_mask
from strop.model.length_head import LengthHead, round_lengths
from strop.model.pixel_decoder import PixelDecoder
from strop.model.pretrained import PretrainedMixin
from strop.model.quality_head import QualityHead
from strop.model.quantizer import QuantizerOut, VectorQuantizer
from strop.model.teachers import Teacher, build_teacher, teacher_flops

__all__ = ["ForwardOut", "GenOut", "Strop", "build_model"]


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


class Strop(PretrainedMixin, nn.Module):
    """The STROP tokenizer. Build with `build_model(cfg)`; see the module docstring."""

    teacher: Teacher  # set with object.__setattr__, outside the module tree
    field_mean: torch.Tensor | None  # a buffer under model.residual_targets, else None

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
        # Each stage is built from the part of the config it owns; teacher width and grid
        # come from the built teacher, which knows them for every teacher kind.
        self.generator = Generator(cfg.transformer, dim, grid, cfg.l_max)
        self.quantizer = VectorQuantizer(cfg.quantizer)
        self.length_head = LengthHead(cfg.d, cfg.l_max)
        self.interpreter = Interpreter(cfg.transformer, grid[0] * grid[1], dim, cfg.l_max)
        self.pixel_decoder = PixelDecoder(dim, grid, cfg.image_size, cfg.decoder_width)
        for part in (self.generator, self.quantizer, self.length_head, self.interpreter):
            part.apply(init_weights)
        # Opt-in and built last: a default model draws its initial weights exactly as before.
        self.quality_head: QualityHead | None = None
        if cfg.quality_head:
            self.quality_head = QualityHead(cfg.d, cfg.l_min, cfg.l_max)
            self.quality_head.apply(init_weights)
        # Opt-in (model.residual_targets): the interpreter predicts the teacher field minus the
        # training set's mean field, which is a buffer so that it travels with every checkpoint
        # and export. Absent by default, so a default model's state_dict is unchanged.
        if cfg.residual_targets:
            self.register_buffer("field_mean", torch.zeros(grid[0] * grid[1], dim))
        else:
            self.field_mean = None

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

    def predict_error_curve(self, feats: torch.Tensor) -> torch.Tensor:
        """The eps-conditioned head's predicted log alignment error at each prefix length
        L_min..L_max (B, L_max - L_min + 1), from the detached pooled projection (opt-in)."""
        if self.quality_head is None:
            raise ValueError(
                f"{self.cfg.summary()} has no eps-conditioned length head (model.quality_head=false)"
            )
        with torch.no_grad():
            pooled = self.generator.project(feats).mean(dim=1)
        return self.quality_head(pooled)

    def quality_lengths(self, feats: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """Integer lengths meant to reach alignment error `eps` (scalar or (B,)), in one pass:
        the shortest whose predicted error is <= eps (B,) long."""
        log_curve = self.predict_error_curve(feats)
        assert self.quality_head is not None  # predict_error_curve refused otherwise
        return self.quality_head.lengths(log_curve, torch.as_tensor(eps, device=feats.device))

    def length_head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the length head(s): trained from phase 3, on their own lr."""
        heads = [self.length_head] + ([self.quality_head] if self.quality_head else [])
        return [p for head in heads for p in head.parameters()]

    def head_lengths(self, feats: torch.Tensor) -> torch.Tensor:
        """Integer inference lengths `clip(round(L_hat), L_min, L_max)` (B,) long. A NaN
        L_hat (weights that overflow float32) is a ValueError: rounded, it was -2^63."""
        l_hat = self.predict_length(feats)
        check_finite_rows(
            l_hat,
            "length head: the predicted length of image",
            " (its weights overflow float32, which a trained tokenizer's never do)",
        )
        return round_lengths(l_hat, self.cfg.l_min, self.cfg.l_max)

    def interpret_tokens(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Field (B, P, D) from full-length tokens (B, L_max, d), positions >= lengths masked."""
        return self._full_field(self.interpreter(tokens, lengths))

    def _full_field(self, predicted: torch.Tensor) -> torch.Tensor:
        """The interpreter's output as a teacher field: plus the mean field under
        `residual_targets` (the interpreter then predicts only what differs from it)."""
        return predicted if self.field_mean is None else predicted + self.field_mean

    def align_view(self, field: torch.Tensor) -> torch.Tensor:
        """What the align loss compares (B, P, D): the field itself, or under
        `residual_targets` its deviation from the mean field, so that the background every
        image shares no longer dominates the cosine."""
        return field if self.field_mean is None else field - self.field_mean

    @torch.no_grad()
    def patch_weights(self, target: torch.Tensor) -> torch.Tensor | None:
        """Per-patch weights (B, P) of the align error under `foreground_weights`: the
        teacher's squared deviation from the mean field, scaled to mean 1 per image, so the
        patches that differ between images (objects) outweigh the shared floor; else None."""
        if not self.cfg.foreground_weights or self.field_mean is None:
            return None
        deviation = (target.float() - self.field_mean).pow(2).sum(dim=-1)
        return deviation / deviation.mean(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def set_field_mean(self, mean: torch.Tensor) -> None:
        """Store the training set's mean teacher field (P, D) (`residual_targets` only)."""
        if self.field_mean is None:
            raise ValueError(
                f"{self.cfg.summary()} has no mean field (model.residual_targets=false)"
            )
        if mean.shape != self.field_mean.shape:
            raise ValueError(
                f"mean field: expected shape {tuple(self.field_mean.shape)}, got {tuple(mean.shape)}"
            )
        self.field_mean.copy_(mean)

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

    def restart_dead_codes(
        self, gen: GenOut, active: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Re-seed dead codes from active batch vectors (outside compiled regions); how many,
        as a 0-d device tensor."""
        return self.quantizer.restart_dead_codes(gen.quantized, active, generator)

    # ------------------------------------------------------------------ inference API

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, length_mode: str = "head"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Programs of images (B, 3, S, S), floats in [0, 1]: codes (B, L_max) long, -1 past
        each length, and lengths (B,). Integer images, values outside [0, 1] and NaN or
        infinite pixels are a ValueError (`strop.model.boundary`)."""
        check_images(images, self.cfg.image_size)
        return self.encode_features(self.teacher_features(images), length_mode)

    @torch.no_grad()
    def encode_features(
        self, feats: torch.Tensor, length_mode: str = "head"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` from teacher features (e.g. a feature cache). `length_mode` is any
        `--length-mode` value (`strop.model.length_modes`): head, fixed, prefix:N, cap:N,
        search:EPS, quality:EPS; a bad or unusable one raises `LengthModeError` (a ValueError).
        Non-finite features, and programs no trained tokenizer makes (non-finite activations,
        a length outside [L_min, L_max], a code outside [0, K)), are a ValueError: they never
        leave the model (`strop.model.boundary`)."""
        from strop.model.length_modes import check_length_mode, parse_length_mode, program_lengths

        mode = parse_length_mode(length_mode)
        check_length_mode(mode, self.cfg, self.cfg.summary())
        check_finite_rows(feats, "teacher features: image")
        gen = self.generate(feats)
        lengths, _ = program_lengths(self, feats, gen.tokens, mode)
        codes = gen.codes.masked_fill(~prefix_mask(lengths, self.cfg.l_max), -1)
        check_programs(codes, lengths, gen.z_e, self.cfg.l_min, self.cfg.l_max, self.cfg.k)
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
        field: torch.Tensor | None = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            tokens = self.quantizer.embed_codes(codes[rows, :length])
            part = self._full_field(self.interpreter(tokens, None))
            if field is None:
                field = part.new_empty(codes.shape[0], *part.shape[1:])
            field[rows] = part
        if field is None:  # an empty batch: no lengths to loop over
            p, dim = self.interpreter.grid_queries.shape[0], self.interpreter.proj_out.out_features
            return torch.empty(0, p, dim, device=self.device)
        return field

    # ------------------------------------------------------------------ checkpoints

    def load_state_dict_checked(self, state_dict: dict[str, Any]) -> None:
        """`load_state_dict` that names the preset/teacher or the shape that does not match."""
        self.check_state_dict(state_dict)
        self.load_state_dict(state_dict)

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise a ValueError naming the preset/teacher, key or shape of `state_dict` that
        does not fit this model. Reads shapes only: a model built on the meta device checks a
        safetensors header's shapes (as meta tensors) before any memory is allocated."""
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
                "quality_head",
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

    # ------------------------------------------------------------------ accounting

    def flops_per_image(self, include_teacher: bool = False) -> int:
        """Analytic forward matmul FLOPs per image at L = L_max (see `strop.model.cost`)."""
        flops = model_flops(self.cfg, self.interpreter.proj_out.out_features)
        if include_teacher:
            flops += teacher_flops(self.cfg.teacher, self.cfg.image_size, self.cfg.patch_size)
        return flops


def build_model(cfg: ModelConfig, teacher: Teacher | None = None) -> Strop:
    """A STROP model for `cfg`; the teacher is built from the config unless one is given."""
    return Strop(cfg, teacher)
