"""Which share of a sharded pass (`strop export`, `strop cache-features`) this process
writes, under `torchrun` or alone.

torchrun (`python -m torch.distributed.run`) starts one process per rank with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment (checked on torch
2.13's `torch.distributed.run`; across nodes its rendezvous sets the same variables). Ranks
share no data: each encodes the shards `strop.evaluation.sharded_pass.shards_of_rank` gives it,
and the process group (gloo, so CPU-only machines work too) serves only the final barrier
before rank 0 writes the manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

#: how long a rank waits at the final barrier for the slowest rank; after a resume one rank
#: may have all its shards and wait out another's whole share
BARRIER_TIMEOUT = timedelta(hours=48)


class RankError(ValueError):
    """RANK/WORLD_SIZE/LOCAL_RANK that do not describe a process of a group."""


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def gpu(self) -> int | None:
        """The GPU index `auto` means for this process (`strop.devices.resolve_device`):
        LOCAL_RANK under torchrun, None (the default GPU) alone."""
        return self.local_rank if self.distributed else None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RankError(f"environment {name}={raw!r}: expected an integer") from None


def current_rank() -> Rank:
    """This process's rank from the environment torchrun sets; (0, 1) when run alone."""
    rank = Rank(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if rank.world_size < 1 or not 0 <= rank.rank < rank.world_size or rank.local_rank < 0:
        raise RankError(
            f"environment RANK={rank.rank} WORLD_SIZE={rank.world_size} "
            f"LOCAL_RANK={rank.local_rank}: expected 0 <= RANK < WORLD_SIZE"
        )
    return rank


def start_group(rank: Rank) -> None:
    """Join the gloo process group (a no-op alone); do it before the long work, so a
    misconfigured rendezvous fails at once rather than at the barrier."""
    if not rank.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", rank=rank.rank, world_size=rank.world_size, timeout=BARRIER_TIMEOUT
        )


def barrier_and_leave(rank: Rank) -> None:
    """Wait until every rank has finished its shards, then leave the group."""
    if not rank.distributed:
        return
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
