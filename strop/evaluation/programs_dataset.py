"""Writing the programs dataset: a split's programs as parquet shards plus `manifest.json`.

Torch-free; its reader is `strop.runs` (`read_programs` takes this form too). Layout
(`docs/FORMATS.md`)::

    RUN/programs/
      plan.json                  what the export writes (run, weights, length mode, splits,
                                 rows per split, shard size); a resumed export must match it
      train-00000.parquet        rows [0, N) of split train; each shard is a programs file
      train-00001.parquet        (same columns and `strop` schema metadata as programs.parquet)
      val-00000.parquet
      manifest.json              written last: counts per split, K, length mode, weights,
                                 every shard with its rows and sha256

Design decisions
- A shard is a pure function of (plan, split, index): shard i of a split holds that split's
  rows [i*N, (i+1)*N) in dataset order, whoever writes it. So a resumed export, or one run
  by another number of processes (`torchrun`), writes byte-identical shards, and the rows in
  manifest order equal a one-process export's.
- A shard is written under `.NAME.partial` and renamed to `NAME` after `close` + `fsync`: a
  file under a shard's name is finished, and a resumed export never rewrites it. A kill
  leaves at most one `.partial` per process, which the rerun overwrites.
- The manifest appears only when every shard is there; readers refuse a folder without it
  (an interrupted export) instead of reading part of a split. Readers check each shard's
  sha256 and row count against it, so a replaced or truncated shard is an error, not data.
- Rows go to the writer in row groups of at most `ROW_GROUP_ROWS`: memory holds one row group,
  never a shard or a split.
- Images that fail to decode (a truncated member of a tar shard) are no rows but are never
  lost: the shard that planned them lists them (image id + reason) in its own parquet
  key-value metadata (`strop_failed_images`), written with the shard, so a resume or another
  rank never loses the list; the manifest gathers them under `failed_images` and counts them
  per split (`failed`). A shard's rows plus its failures are its planned rows.
- Plain parquet files with one schema, so `datasets.load_dataset("parquet",
  data_files={"train": "RUN/programs/train-*.parquet"})` reads them (tested on datasets 5.2).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from strop.atomic import atomic_write_text
from strop.evaluation import sharded_pass
from strop.evaluation.sharded_pass import (  # noqa: F401 - also this module's public names
    Shard,
    ShardLayout,
    shards_of_rank,
)
from strop.runs import (
    DATASET_FORMAT,
    DATASET_MANIFEST,
    DATASET_PLAN,
    DATASET_VERSION,
    Programs,
    ProgramsDatasetError,
    concat_programs,
    is_programs_dataset,
    programs_table,
    read_json,
    sha256_of,
)

MANIFEST_FILE = DATASET_MANIFEST
PLAN_FILE = DATASET_PLAN

#: rows per shard when `--shard-rows` is not given: ~100k programs is 5-50 MB of parquet
#: (codes alone; CLEVR scene JSON makes it ~200 MB), small enough to rewrite after a kill.
DEFAULT_SHARD_ROWS = 100_000
#: rows buffered before they go to the parquet writer as one row group
ROW_GROUP_ROWS = 4096
#: parquet key-value metadata of a shard: JSON list of {"image_id", "reason"} not encoded
FAILED_KEY = b"strop_failed_images"


def dataset_dir_for(target: str | os.PathLike[str]) -> Path:
    """The folder of the dataset form of output `target`: a folder is itself, `X.parquet` ->
    `X/`, any other file name `X` -> `X.shards/` (never a folder where a file may be)."""
    target = Path(target)
    if target.is_dir():
        return target
    if target.suffix == ".parquet":
        return target.with_suffix("")
    return target.with_name(target.name + ".shards")


def check_split_name(split: str) -> str:
    """Split names become file names: letters, digits, `_`, `.`, `-`."""
    return sharded_pass.check_split_name(split, PROGRAMS_LAYOUT)


def shard_name(split: str, index: int) -> str:
    return Shard(split, index, 0, 0, PROGRAMS_LAYOUT.suffix).name


# --------------------------------------------------------------------------- the plan

#: the programs dataset as a sharded pass writes it (`strop.evaluation.sharded_pass`)
PROGRAMS_LAYOUT = ShardLayout(
    suffix=".parquet",
    companions=(),
    product="programs dataset",
    run="an export",
    command="export",
    file_kind="parquet",
    error=ProgramsDatasetError,
)


def plan_shards(split_rows: dict[str, int], shard_rows: int) -> list[Shard]:
    """Every shard of an export, splits in the given order, each split cut every `shard_rows`."""
    return sharded_pass.plan_shards(split_rows, shard_rows, PROGRAMS_LAYOUT)


def remove_dataset(folder: Path) -> None:
    """Delete a programs dataset folder's own files (shards, partials, plan, manifest) and the
    folder when that empties it; anything else in it stays."""
    if not is_programs_dataset(folder):
        return
    for path in folder.iterdir():
        own = re.fullmatch(r"\.?[A-Za-z0-9_][A-Za-z0-9_.-]*-\d{5}\.parquet(\.partial)?", path.name)
        if own or path.name in (MANIFEST_FILE, PLAN_FILE):
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


# --------------------------------------------------------------------------- writing


class ShardWriter:
    """Appends programs to one shard in row groups; `close` makes the shard appear at once."""

    def __init__(self, folder: Path, name: str, meta: dict[str, Any]) -> None:
        self.path = folder / name
        self.partial = folder / f".{name}.partial"
        self.meta = meta
        self.rows = 0
        self._buffer: list[Programs] = []
        self._buffered = 0
        self._handle: Any = None
        self._writer: Any = None
        #: images of this shard that did not decode: {"image_id", "reason"}
        self.failed: list[dict[str, str]] = []

    def append(self, programs: Programs) -> None:
        self._buffer.append(programs)
        self._buffered += len(programs)
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:

        if not self._buffer:
            return
        table = programs_table(concat_programs(self._buffer, self.meta))
        self._start(table.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows
        self._buffer, self._buffered = [], 0

    def _start(self, schema: Any) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            self._handle = open(self.partial, "wb")  # pyarrow refuses paths that are not UTF-8
            self._writer = pq.ParquetWriter(self._handle, schema)

    def close(self) -> Path:
        self._flush()
        if self._writer is None:
            if not self.failed:
                raise ProgramsDatasetError(f"{self.path}: a shard with no rows")
            # every image of the shard failed: an empty shard still carries their list
            empty = Programs(codes=[], codebook_size=self.meta.get("codebook_size"), meta=self.meta)
            self._start(programs_table(empty).schema)
        if self.failed:
            self._writer.add_key_value_metadata({FAILED_KEY: json.dumps(self.failed)})
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.partial, self.path)
        return self.path


def _parquet_rows(path: Path) -> tuple[int, list[dict[str, str]]]:
    """(rows, failed images) of a finished shard."""
    import pyarrow.parquet as pq

    with open(path, "rb") as handle:
        metadata = pq.ParquetFile(handle).metadata
    raw = (metadata.metadata or {}).get(FAILED_KEY)
    return int(metadata.num_rows), json.loads(raw) if raw else []


def write_manifest(folder: Path, shards: list[Shard], meta: dict[str, Any]) -> Path:
    """Check every planned shard is there with its rows, that no image id repeats, and write
    `manifest.json` (the dataset's commit point)."""
    missing = [s.name for s in shards if not (folder / s.name).is_file()]
    if missing:
        raise ProgramsDatasetError(
            f"{folder}: {len(missing)} shards not written ({missing[0]}, ...); rerun the export"
        )
    records = []
    splits: dict[str, int] = {s.split: 0 for s in shards}
    failed_per_split: dict[str, int] = {}
    failed: list[dict[str, str]] = []
    for s in shards:
        rows, lost = _parquet_rows(folder / s.name)
        if rows + len(lost) != s.rows:
            raise ProgramsDatasetError(
                f"{folder / s.name}: {rows} rows and {len(lost)} failed images, the plan "
                f"says {s.rows}; pass --replace"
            )
        records.append(
            {"file": s.name, "split": s.split, "rows": rows, "sha256": sha256_of(folder / s.name)}
        )
        splits[s.split] += rows
        if lost:
            failed_per_split[s.split] = failed_per_split.get(s.split, 0) + len(lost)
            failed += [{"split": s.split, **f} for f in lost]
    check_unique_ids(folder, [s.name for s in shards])
    manifest = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "rows": sum(splits.values()),
        "splits": splits,
        "codebook_size": meta.get("codebook_size"),
        "length_mode": meta.get("length_mode"),
        "weights": meta.get("weights"),
        "meta": meta,
        "shards": records,
        "failed": failed_per_split,
        "failed_images": failed,
    }
    path = folder / MANIFEST_FILE
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def check_unique_ids(folder: Path, names: list[str]) -> None:
    """Each image once in the dataset, checked in memory that grows by 8 bytes an image:
    64-bit hashes of the ids are sorted, and only ids whose hash repeats are looked up again."""
    import pyarrow.parquet as pq

    def ids(name: str) -> list[str]:
        with open(folder / name, "rb") as handle:
            return [str(v) for v in pq.read_table(handle, columns=["image_id"])[0].to_pylist()]

    def key(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")

    hashes = np.sort(np.fromiter((key(i) for n in names for i in ids(n)), dtype=np.uint64))
    clashing = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not clashing:
        return
    seen: dict[str, int] = {}
    for n in names:
        for i in ids(n):
            if key(i) in clashing:
                seen[i] = seen.get(i, 0) + 1
    repeated = [i for i, count in seen.items() if count > 1]
    if repeated:
        raise ProgramsDatasetError(
            f"{folder}: {len(repeated)} image ids appear more than once "
            f"({', '.join(repeated[:5])}); a programs dataset lists each image once"
        )


# --------------------------------------------------------------------------- reading


def failed_images(path: Path) -> list[dict[str, str]]:
    """The images an export at `path` (its manifest, or a single programs file) could not
    decode: {"split", "image_id", "reason"} each; [] for anything else."""
    import pyarrow.parquet as pq

    if path.name == MANIFEST_FILE and path.is_file():
        return list(read_json(path).get("failed_images", []))
    if path.is_file() and path.suffix == ".parquet":
        with open(path, "rb") as handle:
            raw = (pq.read_schema(handle).metadata or {}).get(b"strop")
        return list(json.loads(raw).get("failed_images", [])) if raw else []
    return []
