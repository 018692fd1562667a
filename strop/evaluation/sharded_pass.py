"""One pass of a model over dataset splits, written as planned shards: resumable, rank-split.

`strop export` (programs, `strop.evaluation.programs_dataset`) and `strop cache-features`
(teacher features, `strop.evaluation.feature_shards`) are this pass with another encoder
and another shard file; everything else is here:

- the plan: each split cut every `shard_rows` rows (`plan_shards`), recorded in `plan.json`;
  a rerun must match it (`check_plan`), so finished shards are reused only for the same work;
- resume: a shard's file appears under its final name only when complete (its writer writes
  `.NAME.partial` and renames it), so a file there is finished and never rewritten;
- ranks: under `torchrun` rank r writes shards r, r+N, ... (`strop.evaluation.distributed`),
  and rank 0 writes the manifest (`finish`) after a barrier, when every shard is there.

A shard is a pure function of (plan, split, index): it holds the split's rows [start, stop)
in dataset order, encoded from its own loader so batches never straddle a shard boundary.
Hence a resumed pass, or one run by another number of processes, writes byte-identical
shards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from strop.atomic import atomic_write_text
from strop.evaluation.distributed import Rank, barrier_and_leave, start_group
from strop.output_unit import check_writable
from strop.runs import RunFolderError, read_json

PLAN_FILE = "plan.json"
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ShardLayout:
    """What a pass writes and how its errors name it.

    `suffix` ends a shard's main file, whose presence marks the shard finished; `companions`
    are the suffixes of files written beside it (before it appears), removed with it."""

    suffix: str  # ".parquet"
    companions: tuple[str, ...]  # () or (".rows.jsonl",)
    product: str  # "programs dataset": what the folder is called in messages
    run: str  # "an export": what wrote it, in messages
    command: str  # "export": the command to rerun
    file_kind: str  # "parquet": the shard files, in messages
    error: type[Exception]  # raised with a one-line message

    def files_of(self, name: str) -> list[str]:
        """A shard's main file name and its companions' names."""
        stem = name[: -len(self.suffix)]
        return [name, *(stem + c for c in self.companions)]


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `split`: the split's rows [start, stop)."""

    split: str
    index: int
    start: int
    stop: int
    suffix: str = ".parquet"

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}{self.suffix}"

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ShardSink(Protocol):
    """Takes one shard's parts in order; `close` makes the finished file appear at once."""

    def append(self, part: Any) -> None: ...

    def close(self) -> Path: ...


def check_split_name(split: str, layout: ShardLayout) -> str:
    """Split names become file names: letters, digits, `_`, `.`, `-`."""
    if not _SPLIT_NAME.fullmatch(split):
        raise layout.error(
            f"split {split!r}: a {layout.product} names its shards after the split; use "
            "letters, digits, '_', '.' and '-'"
        )
    return split


def plan_shards(split_rows: dict[str, int], shard_rows: int, layout: ShardLayout) -> list[Shard]:
    """Every shard of a pass, splits in the given order, each split cut every `shard_rows`."""
    if shard_rows < 1:
        raise layout.error(f"--shard-rows {shard_rows}: expected a positive integer")
    shards = []
    for split, n in split_rows.items():
        check_split_name(split, layout)
        for index, start in enumerate(range(0, n, shard_rows)):
            shards.append(Shard(split, index, start, min(start + shard_rows, n), layout.suffix))
    return shards


def shards_of_rank(shards: list[Shard], rank: int, world_size: int) -> list[Shard]:
    """Round-robin: shard i goes to rank i % world_size (balanced to within one shard)."""
    return [s for i, s in enumerate(shards) if i % world_size == rank]


def check_plan(folder: Path, plan: dict[str, Any], replace: bool, layout: ShardLayout) -> None:
    """Record `plan` in `folder`, or check it equals the plan of the pass found there.

    Finished shards are reused only under the same plan: other weights, settings, splits or
    shard size would mix two passes in one folder."""
    path = folder / PLAN_FILE
    plan = json.loads(json.dumps(plan))  # as it reads back (tuples become lists)
    if path.is_file() and not replace:
        old = _read_plan(path, layout)
        if old != plan:
            differ = sorted(k for k in {*old, *plan} if old.get(k) != plan.get(k))
            first = f"{differ[0]} {old.get(differ[0])!r} here, {plan.get(differ[0])!r} now"
            raise layout.error(
                f"{path}: {layout.run} with other settings ({', '.join(differ)}; {first[:160]}) "
                f"wrote this {layout.product}; rerun it with those settings to resume, --out "
                "another folder, or pass --replace to start over"
            )
    elif not path.is_file() and not replace:
        strays = sorted(p.name for p in folder.glob(f"*{layout.suffix}")) if folder.is_dir() else []
        if strays:  # shards nobody can vouch for: never mix them in
            raise layout.error(
                f"{folder}: holds {len(strays)} {layout.file_kind} files ({strays[0]}, ...) but "
                f"no {PLAN_FILE}; --out another folder or pass --replace to start over"
            )
    folder.mkdir(parents=True, exist_ok=True)
    if replace or not path.is_file():
        atomic_write_text(path, json.dumps(plan, indent=2, sort_keys=True) + "\n")


def _read_plan(path: Path, layout: ShardLayout) -> dict[str, Any]:
    try:
        return read_json(path)
    except RunFolderError as err:  # the same one-line message, under the pass's own error
        raise layout.error(str(err)) from None


def clear_shards(folder: Path, names: list[str], manifest: str, layout: ShardLayout) -> None:
    """Remove the named shards (their companions and partial files) and the manifest."""
    (folder / manifest).unlink(missing_ok=True)
    for name in names:
        for file in layout.files_of(name):
            (folder / file).unlink(missing_ok=True)
            (folder / f".{file}.partial").unlink(missing_ok=True)


def run_sharded_pass(
    folder: Path,
    plan: dict[str, Any],
    sizes: dict[str, int],
    layout: ShardLayout,
    manifest: str,
    rank: Rank,
    replace: bool,
    encode: Callable[[str, range, str, Any], Iterator[Any]],
    open_shard: Callable[[Shard], ShardSink],
    finish: Callable[[list[Shard]], Path],
) -> Path:
    """This rank's unfinished shards of the pass, then, on rank 0 after every rank is done,
    `finish(shards)` (the manifest). Returns what `finish` returns, or `folder` on other ranks.

    `encode(split, rows, description, sink)` yields the parts of those rows in order (an
    encoded batch each) and may record with `sink` what it could not encode (export's failed
    images); `open_shard(shard)` gives the sink they go to; `plan["shard_rows"]` cuts."""
    shards = plan_shards(sizes, plan["shard_rows"], layout)
    mine = shards_of_rank(shards, rank.rank, rank.world_size)
    check_writable(folder / PLAN_FILE)
    start_group(rank)
    if replace:  # each rank clears only the shards it writes: no rank deletes another's work
        clear_shards(folder, [s.name for s in mine], manifest, layout)
        if rank.rank == 0:
            planned = {s.name for s in shards}
            strays = [p.name for p in folder.glob(f"*{layout.suffix}")] if folder.is_dir() else []
            clear_shards(folder, [n for n in strays if n not in planned], manifest, layout)
    check_plan(folder, plan, replace, layout)
    for shard in mine:
        if (folder / shard.name).is_file():
            continue  # finished before a kill: never rewritten
        sink = open_shard(shard)
        of = sum(1 for s in shards if s.split == shard.split)
        for part in encode(
            shard.split,
            range(shard.start, shard.stop),
            f"{shard.split} shard {shard.index + 1}/{of}",
            sink,
        ):
            sink.append(part)
        sink.close()
    barrier_and_leave(rank)
    if rank.rank != 0:
        return folder
    return finish(shards)
