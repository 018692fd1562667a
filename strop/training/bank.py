"""Per-image banks: a value per training image (or per image and cell), averaged over visits.

The oracle's length targets (`TargetBank`, one value per image) and the error curves of the
eps-conditioned length head (`ErrorCurveBank`, one value per image and prefix length) are
the same structure: `ImageBank` holds it once, each of them names what its values are.

Design decisions
- Each visit blends the new value into the stored one with `decay` (the first visit stores
  it as is); with duplicate indices in one update, the later one wins.
- The bank lives on the training device and is indexed with device tensors, so a step never
  reads it back to the host (`check_indices` checks the indices without a host read on CUDA).
- `state_dict()` is plain CPU tensors under the names earlier versions wrote (`targets` or
  `errors`, and `visits`), loadable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import torch

from strop.training.host_sync import to_device


class ImageBank:
    """Exponential averages over visits of `size` images, `cells` values each (or one).

    `name` names the bank in messages; `key` is its values' name in `state_dict()`."""

    def __init__(
        self,
        size: int,
        decay: float,
        *,
        cells: int | None = None,
        device: torch.device | str = "cpu",
        name: str = "bank",
        key: str = "values",
    ) -> None:
        self.decay, self.name, self.key = decay, name, key
        self.device = torch.device(device)
        shape = (size,) if cells is None else (size, cells)
        self.values = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.visits = torch.zeros(shape, dtype=torch.int32, device=self.device)

    def __len__(self) -> int:
        return len(self.values)

    def blend(
        self, indices: torch.Tensor, values: torch.Tensor, cells: torch.Tensor | None = None
    ) -> None:
        """Blend `values` (n,) into the bank at images `indices` (n,) (and `cells` (n,))."""
        indices = to_device(indices.long(), self.device)
        values = to_device(values.detach().float(), self.device)
        check_indices(indices, len(self), self.name)
        at = (indices,) if cells is None else (indices, to_device(cells.long(), self.device))
        old = self.values[at]
        seen = self.visits[at] > 0
        self.values[at] = torch.where(seen, self.decay * old + (1.0 - self.decay) * values, values)
        self.visits[at] += 1

    def lookup(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored values of images `indices` and which of them hold a value (bool, same
        shape), on the bank's device."""
        indices = to_device(indices.long(), self.device)
        return self.values[indices].clone(), self.visits[indices] > 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {self.key: self.values.cpu().clone(), "visits": self.visits.cpu().clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state[self.key].shape != self.values.shape:
            raise ValueError(f"{self.name}: {self.mismatch(tuple(state[self.key].shape))}")
        self.values = state[self.key].float().to(self.device, copy=True)
        self.visits = state["visits"].int().to(self.device, copy=True)

    def mismatch(self, stored: tuple[int, ...]) -> str:
        """Why a checkpoint's bank of shape `stored` does not fit this run."""
        return f"checkpoint holds {stored}, this run expects {tuple(self.values.shape)}"


class TargetBank(ImageBank):
    """The oracle's accumulated length target of each training image (by dataset index)."""

    def __init__(self, size: int, decay: float, device: torch.device | str = "cpu") -> None:
        super().__init__(size, decay, device=device, name="target bank", key="targets")

    @property
    def targets(self) -> torch.Tensor:
        return self.values

    def update(self, indices: torch.Tensor, targets: torch.Tensor) -> None:
        """Blend `targets` (n,) into the bank at `indices` (n,); later duplicates win."""
        self.blend(indices, targets)

    @property
    def coverage(self) -> float:
        """Share of training images with a target (a read: log steps only)."""
        return float((self.visits > 0).float().mean()) if len(self) else 0.0

    def mismatch(self, stored: tuple[int, ...]) -> str:
        return f"checkpoint holds {stored[0]} targets, the training set has {len(self)} images"


class ErrorCurveBank(ImageBank):
    """Each training image's alignment error at each prefix length in [l_min, l_max]."""

    def __init__(
        self, size: int, l_min: int, l_max: int, decay: float, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__(
            size,
            decay,
            cells=l_max - l_min + 1,
            device=device,
            name="error-curve bank",
            key="errors",
        )
        self.l_min, self.l_max = l_min, l_max

    @property
    def errors(self) -> torch.Tensor:
        return self.values

    def update(self, indices: torch.Tensor, lengths: torch.Tensor, errors: torch.Tensor) -> None:
        """Blend errors (n,) measured at prefix `lengths` (n,) of images `indices` (n,)."""
        self.blend(indices, errors, cells=lengths.long() - self.l_min)

    def mismatch(self, stored: tuple[int, ...]) -> str:
        return (
            f"checkpoint holds {stored} cells, this run expects {tuple(self.values.shape)} "
            "(training images x lengths)"
        )


def check_indices(indices: torch.Tensor, size: int, bank: str) -> None:
    """`IndexError` for an index outside [0, size), checked without a host read on CUDA
    (`torch._assert_async`: a failure there is a device-side assert at a later call)."""
    if not indices.numel():
        return
    inside = ((indices >= 0) & (indices < size)).all()
    try:
        torch._assert_async(inside)
    except RuntimeError:  # CPU tensors are checked at once
        raise IndexError(
            f"{bank}: index {int(indices.max())} outside [0, {size}); "
            "the training set changed since the run started"
        ) from None
