"""The device names `strop` accepts (`--device`, `train.device`), checked where they are given,
the one way to turn such a name into a torch device (`resolve_device`), and the one way to time
work on a device (`synchronize`, `DeviceTimer`).

Torch-free at import (torch is imported where a device is used), so a command line is checked
before torch is imported. A name torch does not know
(`tpu`) would otherwise surface as torch's own error deep inside the work; a name it knows but
this toolkit never runs on (`xla`, `meta`) is refused as well.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N`, `mps`.
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(name: str) -> str:
    """`name` if it is a device this toolkit runs on, else a one-line `ValueError`."""
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; expected {DEVICE_NAMES}")
    return name


def device_option(name: str) -> str:
    """A typer callback for `--device`: an unknown name is a usage error (exit 2)."""
    import typer

    try:
        return check_device(name)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device `name` means on this machine: `auto` is CUDA when available (this
    process's own GPU, cuda:`local_rank`, when torchrun started it; pass None alone), else the
    CPU. A CUDA name on a machine without CUDA is a one-line `ValueError`, not torch's error at
    the first tensor moved there."""
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on `device` has run (CUDA and MPS queue it; CPU runs it
    in the call, so there is nothing to wait for)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class DeviceTimer:
    """Wall seconds of device work, summed over `with timer.measure(device):` blocks.

    On CUDA a call returns once its kernels are queued: `perf_counter` around it measures the
    launches, not the work. So each block waits for the device on entry (work queued before
    it is not billed to it) and on exit (its own work is)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self, device: torch.device) -> Iterator[None]:
        synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(device)
            self.seconds += time.perf_counter() - start
