"""Multi-process training helpers: torchrun/DDP set-up, collectives and a resumable sampler.

Design decisions
- The process group is initialised only when `torchrun` set `WORLD_SIZE > 1`; a plain
  `python -m strop ...` run is a world of one and every collective here is a no-op, so the
  trainer has a single code path.
- Backend: NCCL on CUDA, gloo on CPU (the CPU DDP test runs two gloo processes).
- `ResumableSampler` replaces `DistributedSampler`: the same per-epoch seeded shuffle and the
  same rank striding (indices padded to a multiple of the world size), plus a start offset so
  a resumed run skips exactly the samples it already consumed in the current epoch. The
  permutation comes from a generator seeded with `(seed, epoch)`, never from the global RNG,
  so resuming does not depend on how much randomness the model used before the crash.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` -> this rank's CUDA device when present, else CPU; otherwise as named."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the torchrun process group when there is one; return this process's place."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    """Leave the process group together: every rank reaches the barrier before any destroys it,
    so none exits while a peer still talks to it (a gloo teardown hang seen in CI)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in a world of one)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from every rank along dim 0, in rank order."""
    if not _active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch shuffle, rank-strided, that can start part-way through an epoch."""

    def __init__(
        self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
        if size <= 0:
            raise ValueError("ResumableSampler: the dataset is empty")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = -(-size // world_size)  # padded like DistributedSampler
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first `start` samples."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
