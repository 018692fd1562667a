"""Count the reads of tensor values a piece of torch code makes on the host (an instrument).

`count_host_reads` counts, while it is open, every Python-level read of a tensor's values
(the methods in `READS`, and indexing with a boolean tensor, whose result size needs the
mask's count). CPU has no sync debug mode, so this is the check that runs in CI: on CPU every
tensor is a host tensor, so it counts each read that would wait on a GPU
(`tests/test_train_host_reads.py` counts the training step's). CUDA's own count is
`torch.cuda.set_sync_debug_mode` (`python -m bench gpu`, column `syncs_per_step`), which also
sees blocking copies and kernels that sync inside C++ (`torch.bincount`, for one: the
trainer's step avoids it). Sites are named by the innermost frame inside the `strop` package.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

#: `torch.Tensor` methods that hand a tensor's values to Python (each one a host sync on CUDA).
READS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "nonzero",
    "__float__",
    "__int__",
    "__bool__",
    "__index__",
)

#: Sites of reads inside `torch.optim` (see `HostReads.count_excluding`).
OPTIMIZER_SITES = "via torch/optim/"

_PACKAGE = str(Path(__file__).resolve().parents[1])  # the `strop` package folder


@dataclass
class HostReads:
    """What `count_host_reads` saw: the number of reads and where each came from."""

    count: int = 0
    sites: Counter[str] = field(default_factory=Counter)
    """`method at path:line (function)` of the innermost `strop` frame (or the caller's)."""

    def count_excluding(self, *parts: str) -> int:
        """Reads whose site contains none of `parts` (e.g. `OPTIMIZER_SITES`)."""
        return sum(n for site, n in self.sites.items() if not any(p in site for p in parts))


def _site(method: str) -> str:
    """`method at strop/path.py:line (function)`: the innermost frame of this package, then
    `via path` of the innermost frame when that is in a library (torch.optim, say)."""
    frames = traceback.extract_stack()[:-2]  # drop this function and the counting wrapper
    ours = [f for f in frames if f.filename.startswith(_PACKAGE)]
    frame = (ours or frames)[-1]
    path = Path(frame.filename)
    short = path.relative_to(Path(_PACKAGE).parent).as_posix() if ours else path.name
    site = f"{method} at {short}:{frame.lineno} ({frame.name})"
    if ours and frames[-1] is not frame:
        inner = Path(frames[-1].filename)
        site += f" via {'/'.join(inner.parts[-3:])}"
    return site


def _is_mask_index(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


@contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count Python-level reads of tensor values (any thread) until the block exits.

    Meant for tests and benchmarks: it wraps `torch.Tensor` methods process-wide, so nothing
    else should run torch code beside it."""
    reads = HostReads()
    originals: dict[str, Callable[..., Any]] = {}

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            reads.count += 1
            reads.sites[_site(name)] += 1
            return original(self, *args, **kwargs)

        return read

    def getitem(self: torch.Tensor, index: Any) -> Any:
        if _is_mask_index(index):
            reads.count += 1
            reads.sites[_site("mask index")] += 1
        return originals["__getitem__"](self, index)

    for name in (*READS, "__getitem__"):
        originals[name] = getattr(torch.Tensor, name)
    own = {name for name in originals if name in vars(torch.Tensor)}
    try:
        for name in READS:
            setattr(torch.Tensor, name, counting(name, originals[name]))
        torch.Tensor.__getitem__ = getitem  # type: ignore[method-assign,assignment]
        yield reads
    finally:
        for name, original in originals.items():
            if name in own:
                setattr(torch.Tensor, name, original)
            else:  # inherited from torch._C.TensorBase: drop the override
                delattr(torch.Tensor, name)
