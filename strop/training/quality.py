"""Training the eps-conditioned length head (`strop.model.quality_head`): its targets.

The phase-2 oracle (paper Appendix A, eq. 3) already measures, every step, each sample's
alignment error at three prefix lengths (L, L - r, L + r). `ErrorCurveBank` keeps those
measurements per training image, one cell per length, so that over its visits each image
accumulates its own rate-distortion curve e_i(L). In the phases that train the length head
(3 on) each sample then draws a target error eps and the head regresses, with eq. 6's loss,
the length that curve says reaches it.

Design decisions (ours; the paper has no conditioned head)
- Target for (image i, eps): the shortest L whose stored error is <= eps, L_max when none
  is: the rule of `--length-mode search:EPS`, applied to the curve the oracle probed instead
  of a fresh search, so the head learns to answer in one pass what the search answers in
  L_max - L_min + 1. Lengths never probed are linearly interpolated between their measured
  neighbours (held constant beyond the first and last), since a target needs a whole curve
  and the oracle touches three cells per visit.
- eps is drawn per sample, log-uniform between the smallest and the largest error held by
  the curves of the batch's images: the range the model can reach on such images, which
  follows the teacher's error scale without a constant to tune. The range is the batch's,
  not each image's own, so the head also sees the search's answers outside an image's
  reach: L_max for an eps below the image's best error (no prefix reaches it) and L_min for
  one above its worst. (Drawn inside each image's own range, the head never learned the
  former and answered short where the search answers L_max.) An image with fewer than
  `quality_min_cells` measured lengths has no target yet and is left out of the loss.
- Cells are exponential averages over visits (`curriculum.quality_curve_decay`), like the
  oracle's `TargetBank`, so each curve tracks the improving model.
- The bank is updated from phase 2 on (when the probes exist) and checkpointed with the
  curriculum state, so a resumed run continues bit-for-bit. The draw uses the step's own
  generator after the curriculum's length draw, so it needs no saved state either.
- The bank lives on the training device and is updated there (no host read); the draw
  itself is NumPy on the host, so `curves` reads the batch's rows back in one transfer per
  step (the one device read the conditioned head adds before phase 3).
- Nothing here runs for a default (unconditioned) run: its metrics stay bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch

from strop.training.curriculum import check_indices
from strop.training.host_sync import to_device


class ErrorCurveBank:
    """Per-image alignment error at each prefix length in [l_min, l_max] (exponential
    averages over visits), on the training device and updated there; `curves` reads the
    batch's rows back in one transfer. `state_dict()` is plain CPU tensors for
    `torch.load(weights_only=True)`."""

    def __init__(
        self, size: int, l_min: int, l_max: int, decay: float, device: torch.device | str = "cpu"
    ) -> None:
        self.l_min, self.l_max, self.decay = l_min, l_max, decay
        self.device = torch.device(device)
        n_lengths = l_max - l_min + 1
        self.errors = torch.zeros(size, n_lengths, dtype=torch.float32, device=self.device)
        self.visits = torch.zeros(size, n_lengths, dtype=torch.int32, device=self.device)

    def __len__(self) -> int:
        return len(self.errors)

    def update(self, indices: torch.Tensor, lengths: torch.Tensor, errors: torch.Tensor) -> None:
        """Blend errors (n,) measured at prefix `lengths` (n,) of images `indices` (n,)."""
        indices = to_device(indices.long(), self.device)
        lengths = to_device(lengths.long(), self.device)
        errors = to_device(errors.detach().float(), self.device)
        check_indices(indices, len(self), "error-curve bank")
        cells = lengths - self.l_min
        old = self.errors[indices, cells]
        seen = self.visits[indices, cells] > 0
        blended = torch.where(seen, self.decay * old + (1.0 - self.decay) * errors, errors)
        self.errors[indices, cells] = blended
        self.visits[indices, cells] += 1

    def curves(self, indices: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated curves (n, L_max - l_min + 1) and the count of measured cells (n,)."""
        indices = to_device(indices.long(), self.device)
        # One read for both (float64 holds every float32 error and int32 count exactly).
        rows = torch.stack([self.errors[indices].double(), self.visits[indices].double()])
        errors, visits = rows.cpu().numpy()
        measured = visits > 0
        cells = np.arange(errors.shape[1])
        filled = np.zeros_like(errors)
        for row, (err, ok) in enumerate(zip(errors, measured, strict=True)):
            if ok.any():
                filled[row] = np.interp(cells, cells[ok], err[ok])
        return filled, measured.sum(axis=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"errors": self.errors.cpu().clone(), "visits": self.visits.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["errors"].shape != self.errors.shape:
            raise ValueError(
                f"error-curve bank: checkpoint holds {tuple(state['errors'].shape)} cells, "
                f"this run expects {tuple(self.errors.shape)} (training images x lengths)"
            )
        self.errors = state["errors"].float().to(self.device, copy=True)
        self.visits = state["visits"].int().to(self.device, copy=True)


def shortest_length(curves: np.ndarray, eps: np.ndarray, l_min: int) -> np.ndarray:
    """Per row, the shortest length whose curve value is <= eps (the last length if none)."""
    ok = curves <= eps[:, None]
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), curves.shape[1] - 1)
    return (first + l_min).astype(np.float32)


def quality_targets(
    bank: ErrorCurveBank,
    indices: torch.Tensor,
    min_cells: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw eps per sample and its target length: `(eps (n,), targets (n,), has_target (n,))`.

    eps is log-uniform between the smallest and largest error of the batch's curves (those
    with at least `min_cells` measured lengths; the others get no target, mask False).
    """
    curves, measured = bank.curves(indices)
    u = torch.rand(len(curves), generator=generator, dtype=torch.float64).numpy()
    has_target = measured >= min_cells
    usable = curves[has_target]
    lo = max(float(usable.min()), 1e-8) if usable.size else 1.0
    hi = max(float(usable.max()), lo) if usable.size else 1.0
    eps = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))
    targets = shortest_length(curves, eps, bank.l_min)
    return (
        torch.as_tensor(eps, dtype=torch.float32),
        torch.as_tensor(targets),
        torch.as_tensor(has_target),
    )
