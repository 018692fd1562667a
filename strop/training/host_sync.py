"""What a training step sends to the device: copies in that never wait.

On CUDA a step that reads a device value back to the host (`.item()`, `float(t)`, `.cpu()`,
`if t:`, a boolean mask index...) waits there until the GPU has finished everything queued
before it, so the host cannot run ahead and queue the next step. The trainer keeps its
per-step values on the device (`strop.training.trainer`: which reads remain, and why).

- `to_device` moves host-born data (lengths drawn from the step's generator, dataset indices)
  to the training device without waiting: pinned memory and `non_blocking=True` on CUDA, a
  no-op on CPU. A plain `.to(cuda)` from pageable memory synchronises the stream, and
  `torch.tensor(x, device=cuda)` / `new_tensor` do the same.
- The reads out are counted by `strop.testing.host_reads.count_host_reads` (tests and
  `python -m bench gpu`), not here: it is an instrument, not part of training.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` without a host wait (pinned, non-blocking from the CPU to CUDA)."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
