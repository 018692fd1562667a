"""Training the eps-conditioned length head (`strop.model.quality_head`): its targets.

The phase-2 oracle (paper Appendix A, eq. 3) already measures, every step, each sample's
alignment error at three prefix lengths (L, L - r, L + r). `ErrorCurveBank`
(`strop.training.bank`) keeps those measurements per training image, one cell per length, so
that over its visits each image accumulates its own rate-distortion curve e_i(L). In the
phases that train the length head (3 on) the head regresses each image's curve (`curve_targets`, `curve_loss`); at inference
`quality:EPS` thresholds the predicted curve with the rule of `search:EPS`.

Design decisions (ours; the paper has no conditioned head)
- The target for any eps is the shortest L whose stored error is <= eps: the rule of
  `--length-mode search:EPS`, applied to the curve the oracle probed instead of a fresh
  search. Regressing the curve itself fits that target for every eps at once, where drawing
  one eps per sample and regressing its length fitted one point of it (and averaged the
  step at L_min away: `strop.model.quality_head` has the measurement).
- Only measured cells enter the loss (no interpolation between probed lengths): a cell the
  oracle never touched has no evidence, and the head's shared MLP fills it from the images
  whose cell was measured. An image with fewer than `quality_min_cells` measured lengths is
  left out (early in phase 2 a curve is one or two points of a still-moving model).
- Cells are exponential averages over visits (`curriculum.quality_curve_decay`), like the
  oracle's `TargetBank`, so each curve tracks the improving model and the probe noise of
  single visits averages out.
- The bank is updated from phase 2 on (when the probes exist) and checkpointed with the
  curriculum state, so a resumed run continues bit-for-bit. Nothing is drawn at random.
- The bank lives on the training device and is updated and read there: the targets, the
  mask and the loss are device tensors, so the conditioned head adds no host read per step.
- Nothing here runs for a default (unconditioned) run: its metrics stay bit-identical.
"""

from __future__ import annotations

import torch

from strop.training.bank import ErrorCurveBank

__all__ = ["ErrorCurveBank", "curve_loss", "curve_targets"]  # the bank lives in `bank`


def curve_targets(
    bank: ErrorCurveBank, indices: torch.Tensor, min_cells: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log errors, mask) of images `indices`, both (n, L_max - l_min + 1): the cells the head
    regresses, masked to measured cells of images with at least `min_cells` of them."""
    errors, measured = bank.lookup(indices)
    enough = measured.sum(dim=1, keepdim=True) >= min_cells
    return errors.clamp_min(1e-8).log(), measured & enough


def curve_loss(
    log_curve: torch.Tensor, log_target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared log error over the masked cells (0 when none is masked in)."""
    weight = mask.to(log_curve.dtype)
    squared = (log_curve - log_target.to(log_curve.dtype)) ** 2 * weight
    return squared.sum() / weight.sum().clamp_min(1.0)
