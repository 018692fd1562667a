"""The device names `strop` accepts (`--device`, `train.device`), checked where they are given.

Torch-free, so a command line is checked before torch is imported. A name torch does not know
(`tpu`) would otherwise surface as torch's own error deep inside the work; a name it knows but
this toolkit never runs on (`xla`, `meta`) is refused as well.
"""

from __future__ import annotations

import re

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
