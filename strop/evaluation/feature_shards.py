"""`strop cache-features`: the frozen teacher over dataset splits, as a sharded feature cache.

The pass of `strop.evaluation.sharded_pass` (the one `strop export` runs) with the teacher
alone: shards of at most `shard_rows` images, resumable after a kill, split over `torchrun`
ranks, `index.json` written by rank 0 when every shard is there. The layout and its reader
are `strop.model.feature_cache` (`FeatureCacheDataset` reads this form and the older
single-file one).

Design decisions
- A shard is two files: `SPLIT-NNNNN.rows.jsonl` (image id, object count, scene per row) is
  renamed into place first, then `SPLIT-NNNNN.npy` (the features), so a shard whose `.npy`
  is there is complete; a kill between the two leaves a rows file the rerun rewrites.
- Features are the teacher's output cast to float16 exactly as `write_features` does, so a
  sharded and a single-file cache of the same images hold the same numbers.
- The plan (and `index.json`) names the teacher by its identity: name, patch size and a
  sha256 over its weights, so a folder cached with other DINOv3 weights under the same
  name is refused rather than extended.
- A folder holding a single-file cache is refused (its index would be replaced and its
  splits dropped); `--replace` removes that cache's files once the new index is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strop.atomic import atomic_write_text
from strop.data.inputs import is_input_spec
from strop.devices import resolve_device
from strop.evaluation.distributed import current_rank
from strop.evaluation.run_inputs import (
    check_image_names,
    loader_over,
    open_split,
    plan_data,
    progress_batches,
)
from strop.evaluation.sharded_pass import Shard, ShardLayout, run_sharded_pass
from strop.model.feature_cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    INDEX_FILE,
    FeatureCacheError,
    is_sharded,
    read_index,
)
from strop.runs import sha256_of

#: images per shard when `--shard-rows` is not given: 10k DINOv3-S features at 224 px
#: (196 x 384 fp16) are 1.4 GiB, small enough to recompute after a kill
DEFAULT_CACHE_SHARD_ROWS = 10_000
ROWS_SUFFIX = ".rows.jsonl"

FEATURES_LAYOUT = ShardLayout(
    suffix=".npy",
    companions=(ROWS_SUFFIX,),
    product="feature cache",
    run="a cache-features run",
    command="cache-features",
    file_kind="feature shard (.npy)",
    error=FeatureCacheError,
)


@dataclass
class FeatureRows:
    """One encoded batch: float16 (B, P, D) features and each image's row facts."""

    feats: np.ndarray
    image_id: list[str]
    n_objects: list[int]
    scene: list[str]


def teacher_identity(teacher: Any) -> dict[str, Any]:
    """The teacher's name, patch size and a sha256 over its weights (names, dtypes, shapes
    and bytes in name order); a teacher without weights (`pixels`) hashes to the empty sum."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(dtype=torch.uint8).numpy().tobytes())
    return {
        "name": getattr(teacher, "teacher_name", type(teacher).__name__),
        "patch_size": getattr(teacher, "patch_size", None),
        "weights_sha256": digest.hexdigest(),
    }


class FeatureShardWriter:
    """Writes one shard's rows file and .npy under partial names; `close` renames them."""

    def __init__(self, folder: Path, shard: Shard) -> None:
        self.shard = shard
        self.path = folder / shard.name
        self.rows_path = folder / (shard.name[: -len(FEATURES_LAYOUT.suffix)] + ROWS_SUFFIX)
        self.partial = folder / f".{shard.name}.partial"
        self.rows_partial = folder / f".{self.rows_path.name}.partial"
        self.rows = 0
        self._array: np.memmap | None = None
        self._rows_handle = open(self.rows_partial, "w", encoding="utf-8")

    def append(self, part: FeatureRows) -> None:
        if self._array is None:
            self._array = np.lib.format.open_memmap(
                self.partial,
                mode="w+",
                dtype=np.float16,
                shape=(self.shard.rows, *part.feats.shape[1:]),
            )
        n = len(part.feats)
        if self.rows + n > self.shard.rows:
            raise FeatureCacheError(f"{self.path}: more rows than the plan's {self.shard.rows}")
        self._array[self.rows : self.rows + n] = part.feats
        for image_id, n_objects, scene in zip(
            part.image_id, part.n_objects, part.scene, strict=True
        ):
            row = {"image_id": image_id, "n_objects": n_objects, "scene": scene}
            self._rows_handle.write(json.dumps(row) + "\n")
        self.rows += n

    def close(self) -> Path:
        if self._array is None or self.rows != self.shard.rows:
            raise FeatureCacheError(
                f"{self.path}: {self.rows} rows written, the plan says {self.shard.rows}"
            )
        self._array.flush()
        del self._array
        self._array = None
        with open(self.partial, "rb+") as handle:
            os.fsync(handle.fileno())
        self._rows_handle.flush()
        os.fsync(self._rows_handle.fileno())
        self._rows_handle.close()
        os.replace(self.rows_partial, self.rows_path)  # first: the .npy marks the shard done
        os.replace(self.partial, self.path)
        return self.path


def write_index(
    folder: Path,
    shards: list[Shard],
    identity: dict[str, Any],
    image_size: int,
    shard_rows: int,
    source: str,
) -> Path:
    """Check every planned shard is there with its rows and one feature shape, and write
    `index.json` (the cache's commit point)."""
    splits: dict[str, dict[str, Any]] = {}
    grid: tuple[int, ...] | None = None
    for s in shards:
        path = folder / s.name
        rows_file = s.name[: -len(FEATURES_LAYOUT.suffix)] + ROWS_SUFFIX
        if not path.is_file() or not (folder / rows_file).is_file():
            raise FeatureCacheError(f"{path}: shard not written; rerun the same cache-features")
        shape = np.load(path, mmap_mode="r").shape
        if shape[0] != s.rows or (grid is not None and shape[1:] != grid):
            raise FeatureCacheError(
                f"{path}: features {shape}, expected ({s.rows}, ...) like the other shards; "
                "pass --replace"
            )
        grid = shape[1:]
        entry = splits.setdefault(s.split, {"n": 0, "source": source, "shards": []})
        entry["n"] += s.rows
        entry["shards"].append(
            {
                "file": s.name,
                "rows_file": rows_file,
                "rows": s.rows,
                "sha256": sha256_of(path),
                "rows_sha256": sha256_of(folder / rows_file),
            }
        )
    assert grid is not None  # plan_shards gives every non-empty split a shard
    for entry in splits.values():
        entry["shape"] = [entry["n"], *grid]
    index = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher": identity["name"],
        "teacher_identity": identity,
        "image_size": image_size,
        "patch_size": identity["patch_size"],
        "n_patches": grid[0],
        "dim": grid[1],
        "dtype": "float16",
        "shard_rows": shard_rows,
        "rows": sum(e["n"] for e in splits.values()),
        "splits": splits,
    }
    path = folder / INDEX_FILE
    atomic_write_text(path, json.dumps(index, indent=1) + "\n")
    return path


def _single_file_cache(folder: Path, replace: bool) -> list[Path]:
    """The files of a single-file (version 1) cache in `folder`, which only `replace` may
    remove; refused otherwise, since the new index.json would drop its splits."""
    if not (folder / INDEX_FILE).is_file():
        return []
    index = read_index(folder)
    if is_sharded(index):
        return []
    files = [folder / INDEX_FILE]
    for split, entry in index.get("splits", {}).items():
        files += [folder / str(entry.get("file", f"{split}.f16")), folder / f"{split}.scenes.jsonl"]
    if not replace:
        raise FeatureCacheError(
            f"{folder / INDEX_FILE}: a single-file feature cache "
            f"({', '.join(index.get('splits', {})) or 'no splits'}) is here; --out another "
            "folder, or pass --replace to replace it with a sharded cache"
        )
    return files


def cache_features(
    data: str | os.PathLike[str],
    splits: list[str],
    teacher: Any,
    out: str | os.PathLike[str],
    image_size: int,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "auto",
    shard_rows: int = DEFAULT_CACHE_SHARD_ROWS,
    replace: bool = False,
    progress: bool = True,
) -> Path:
    """Run `teacher` over `splits` of dataset `data` and write the sharded cache in `out`.

    Returns index.json (on ranks other than 0, which write none, the folder). Rerun the same
    call after a kill to resume; under `torchrun` each rank writes its share."""
    import torch

    if shard_rows < 1:
        raise FeatureCacheError(
            f"cache-features: --shard-rows {shard_rows}: expected a positive integer"
        )
    twice = sorted({s for s in splits if splits.count(s) > 1})
    if not splits or twice:
        raise FeatureCacheError(
            f"cache-features: --split {' --split '.join(splits) or '(none)'}: "
            + (f"names {', '.join(twice)} twice" if twice else "names no split")
        )
    rank = current_rank()
    folder = Path(out)
    old_files = _single_file_cache(folder, replace)
    # a hub id or tar pattern stays a string: Path would fold hf://owner/name into hf:/owner
    root: Path | str = str(data) if is_input_spec(data) else Path(data)
    datasets = {name: open_split(root, name, image_size) for name in splits}
    for dataset in datasets.values():
        check_image_names(dataset)
    identity = teacher_identity(teacher)
    dev = resolve_device(device, rank.gpu)
    teacher = teacher.to(dev).eval()
    sizes = {name: len(d) for name, d in datasets.items()}
    plan = {
        "format": CACHE_FORMAT,
        "data": plan_data(root),
        "teacher": identity,
        "image_size": image_size,
        "splits": list(sizes.items()),
        "shard_rows": shard_rows,
        "batch_size": batch_size,
    }

    def encode(split: str, rows: range, what: str, sink: object) -> Iterator[FeatureRows]:
        loader = loader_over(datasets[split], batch_size, rows, workers)
        for batch in progress_batches(
            loader, f"cache-features {identity['name']} {what}", progress
        ):
            if batch.get("failed"):  # a training cache needs every planned row
                first = batch["failed"][0]
                raise ValueError(
                    f"{data}: image {first['image_id']} of split {split!r} failed to decode "
                    f"({first['reason']}); a feature cache needs every image: fix or remove it"
                )
            with torch.no_grad():
                feats = teacher(batch["image"].to(dev))
            yield FeatureRows(
                feats.float().cpu().numpy().astype(np.float16),
                [str(i) for i in batch["image_id"]],
                [int(n) for n in batch["n_objects"]],
                [s or "" for s in batch["scene"]],
            )

    def finish(shards: list[Shard]) -> Path:
        index = write_index(folder, shards, identity, image_size, shard_rows, str(data))
        for path in old_files[1:]:  # the single-file cache it replaces (--replace)
            path.unlink(missing_ok=True)
        return index

    return run_sharded_pass(
        folder,
        plan,
        sizes,
        FEATURES_LAYOUT,
        INDEX_FILE,
        rank,
        replace,
        encode,
        open_shard=lambda shard: FeatureShardWriter(folder, shard),
        finish=finish,
    )
