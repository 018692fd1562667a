"""One training step's differentiable forward and what it yields: `TrainForward` (main and
probe rows in one interpreter call), its `ForwardResult`, the step's `LossTerms`
(`step_loss`), the pending finite/stop flags (`PendingCheck`), the step's generator and the
gradient clipping.

Design decisions (the trainer, `strop.training.trainer`, runs the step around these)
- `TrainForward` is the differentiable forward of one step and the unit that DDP wraps and
  `torch.compile` compiles; the codebook EMA update and dead-code restarts are called after
  it, outside any compiled region (data-dependent shapes).
- Phase-2 probes (curriculum eq. 3) are batched with the main forward: the quantised tokens are
  repeated three times along the batch with the lengths `[L, L - r, L + r]` and go through
  `interpret_tokens` in one call. Only the main rows enter the loss; probe errors are read
  detached by the oracle.
- Every loss term is always computed, and the length loss is multiplied by 0 before phase 3,
  so DDP never sees an unused parameter; the head's gradients are then dropped (set to None)
  so AdamW neither moves nor decays it before it starts training.
- The pixel decoder (inspection only, paper claim iii: pixels never shape the codebook) learns
  from its own loss on the detached field. One backward runs on the sum (DDP wants one), but
  the detached input leaves the tokenizer's gradients exactly those of its own objective;
  the probe's gradients are then clipped by their own norm (`train.grad_clip`) and a
  non-finite one is zeroed by a mask on the device (its weights stay finite; its AdamW step
  then moves it by its moments alone), so no probe value reaches the tokenizer's update:
  with the probe loss scaled by 1000 the tokenizer's parameters after a step are
  bit-identical (`tests/test_train_trainer.py`). AdamW's update is per tensor, so one
  optimiser steps the two apart. `loss` in metrics.jsonl is the tokenizer's objective;
  `pixel_loss` and `pixel_grad_norm` are logged beside it. With cached features and no images
  the probe is frozen instead.
- Length sampling uses a generator seeded from (seed, rank, step) (`step_generator`), so a
  resumed run draws the same lengths with no saved state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from strop.model import losses
from strop.model.interpreter import prefix_mask
from strop.model.network import GenOut, Strop
from strop.training import curriculum as cur
from strop.training import distributed as distr
from strop.training.bank import ErrorCurveBank, TargetBank
from strop.training.config import RunConfig
from strop.training.quality import curve_loss, curve_targets


def clip_norm(params: Sequence[torch.Tensor], clip: float) -> torch.Tensor | float:
    """Total gradient norm of `params` (a device tensor: reading it waits for the GPU),
    clipped in place to `clip` when `clip > 0`."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip).detach()
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).detach()


def gather_rows(rows: torch.Tensor, b: int) -> torch.Tensor:
    """Main, down and up probe rows (3b,) of every rank, as (main of all ranks, down of all
    ranks, up of all ranks), to line up with the gathered bank indices repeated 3x."""
    gathered = distr.all_gather_cat(rows)
    return gathered.view(-1, 3, b).transpose(0, 1).reshape(-1)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    entropy = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


@dataclass
class ForwardResult:
    """What `TrainForward` returns (device tensors, with gradients where they have them)."""

    gen: GenOut
    """The full-length program of the batch."""
    active: torch.Tensor
    """(B, L_max) bool: the active prefix of the main rows."""
    errors: torch.Tensor
    """(copies * B,) per-sample alignment errors: main rows, then the probe rows if any."""
    l_hat: torch.Tensor
    """(B,) predicted lengths."""
    commit_loss: torch.Tensor
    diversity_loss: torch.Tensor
    pixel_loss: torch.Tensor | None
    """None when no images reach the pixel probe."""
    quality_curve: torch.Tensor | None = None
    """(B, L_max - L_min + 1) log errors predicted by the eps-conditioned head (opt-in; None
    without it)."""


@dataclass(frozen=True)
class PendingCheck:
    """A step's all-reduced (non-finite loss, stop requested) flags, still on the device, and
    its loss terms for the message should the loss be the non-finite one."""

    step: int
    flags: torch.Tensor
    terms: dict[str, torch.Tensor]


@dataclass
class LossTerms:
    """The loss terms of one step (unweighted) and the tokenizer's weighted total (the pixel
    probe's loss, `pixel`, is back-propagated beside it, not inside it)."""

    total: torch.Tensor
    align: torch.Tensor
    commit: torch.Tensor
    diversity: torch.Tensor
    length: torch.Tensor | None
    """Phase 3 on."""
    pixel: torch.Tensor | None
    quality: torch.Tensor | None = None
    """The eps-conditioned head's curve loss (opt-in; phase 3 on)."""

    def named(self) -> dict[str, torch.Tensor]:
        """The present terms under their metric names (for messages)."""
        named = {
            "align_loss": self.align,
            "commit_loss": self.commit,
            "diversity_loss": self.diversity,
            "length_loss": self.length,
            "pixel_loss": self.pixel,
            "quality_curve_loss": self.quality,
            "loss": self.total,
        }
        return {k: v for k, v in named.items() if v is not None}


def step_value(value: torch.Tensor | None) -> torch.Tensor | None:
    """A step value left on the device (read on log steps, `strop.training.log`)."""
    return None if value is None else value.detach()


class TrainForward(nn.Module):
    """The differentiable part of a step (what DDP wraps and `torch.compile` compiles).

    `lengths` is (B,) or (3B,) = main, down and up probe lengths; the tokens are repeated to
    match and interpreted in one call.
    """

    def __init__(self, model: Strop, w_mse: float) -> None:
        super().__init__()
        self.model = model
        self.w_mse = w_mse

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        images: torch.Tensor | None,
        with_quality: bool = False,
    ) -> ForwardResult:
        model, b = self.model, feats.shape[0]
        copies = lengths.shape[0] // b
        gen = model.generate(feats)
        tokens = gen.tokens.repeat(copies, 1, 1) if copies > 1 else gen.tokens
        target = feats.repeat(copies, 1, 1) if copies > 1 else feats
        field_all = model.interpret_tokens(tokens, lengths)
        errors = losses.align_error(
            model.align_view(field_all),
            model.align_view(target),
            self.w_mse,
            model.patch_weights(target),
        )
        field = field_all[:b]
        active = prefix_mask(lengths[:b], gen.codes.shape[1])
        quantizer = model.quantizer_losses(gen, active)
        pixel_loss = None
        if images is not None:
            # The probe may see only the first images of the batch (train.pixel_batch).
            recon = model.decode_pixels(field[: images.shape[0]])
            if images.shape[-2:] != recon.shape[-2:]:
                images = F.interpolate(images, size=recon.shape[-2:], mode="area")
            pixel_loss = losses.pixel_loss(recon, images)
        return ForwardResult(
            gen=gen,
            active=active,
            errors=errors,
            l_hat=model.predict_length(feats),
            commit_loss=quantizer["commit_loss"],
            diversity_loss=quantizer["diversity_loss"],
            pixel_loss=pixel_loss,
            quality_curve=model.predict_error_curve(feats) if with_quality else None,
        )


def step_loss(
    out: ForwardResult,
    phase: int,
    step: int,
    cfg: RunConfig,
    bank: TargetBank,
    curves: ErrorCurveBank | None,
    bank_index: Callable[[], torch.Tensor],
) -> LossTerms:
    """The step's loss terms from its forward: alignment, commitment and diversity always,
    the length head's against the target bank from phase 3 (0 times its output before), the
    eps-conditioned head's against the stored curves (opt-in). `bank_index()` gives the
    batch's dataset indices on the device."""
    m = cfg.model
    b = out.l_hat.shape[0]
    align = out.errors[:b].mean()
    w_div = cur.diversity_weight(step, m.w_div, m.div_warmup_steps)
    loss = align + m.w_commit * out.commit_loss + w_div * out.diversity_loss
    length_loss = None
    if cur.head_active(phase):
        target, _ = bank.lookup(bank_index())
        length_loss = losses.length_loss(out.l_hat, target, m.l_max)
        loss = loss + m.w_len * length_loss
    else:
        # Keeps the head in the graph (DDP needs every parameter used); no effect.
        loss = loss + 0.0 * out.l_hat.sum()
    quality_loss = None
    if out.quality_curve is not None and curves is not None:
        if cur.head_active(phase):
            log_target, mask = curve_targets(curves, bank_index(), cfg.curriculum.quality_min_cells)
            quality_loss = curve_loss(out.quality_curve, log_target, mask)
            loss = loss + quality_loss
        else:  # in the graph for DDP, no effect (as the unconditioned head above)
            loss = loss + 0.0 * out.quality_curve.sum()
    # The pixel probe's loss stays out of `total`: it is stepped apart (module docstring).
    return LossTerms(
        total=loss,
        align=align,
        commit=out.commit_loss,
        diversity=out.diversity_loss,
        length=length_loss,
        pixel=out.pixel_loss,
        quality=quality_loss,
    )


def clip_gradients(
    model: Strop, grad_clip: float
) -> tuple[torch.Tensor | float, torch.Tensor | float | None]:
    """Clip the tokenizer's gradients and the pixel probe's, each by its own norm; return
    both norms (the probe's None when it has no gradients). A non-finite probe gradient
    is zeroed on the device (no host read), so the probe's AdamW step moves it by its
    moments only and no NaN reaches its weights; the tokenizer's step is untouched."""
    probe_ids = {id(p) for p in model.pixel_decoder.parameters()}
    # The opt-in eps-conditioned head is clipped apart too: inside the tokenizer's norm
    # its gradient would change how much every other parameter is clipped.
    head = model.quality_head
    quality_ids = {id(p) for p in head.parameters()} if head is not None else set()
    params = [p for p in model.parameters() if p.grad is not None]
    tokenizer = [p for p in params if id(p) not in probe_ids | quality_ids]
    probe = [p for p in params if id(p) in probe_ids]
    norm = clip_norm(tokenizer, grad_clip)
    clip_norm([p for p in params if id(p) in quality_ids], grad_clip)
    if not probe:
        return norm, None
    probe_norm = clip_norm(probe, grad_clip)
    if isinstance(probe_norm, torch.Tensor):
        not_finite = ~probe_norm.isfinite()
        for p in probe:
            if p.grad is not None:
                p.grad.masked_fill_(not_finite, 0.0)
    return norm, probe_norm
