"""Frozen teacher features written once to disk and read back (paper Sec. 2.1 "Encoder").

Two layouts of a cache folder; `FeatureCacheDataset` reads both.

The sharded cache (format version 2), what `strop cache-features` writes
(`strop.evaluation.feature_shards`, the pass of `strop.evaluation.sharded_pass`)::

    CACHE/
      plan.json                   what the pass writes (data, teacher identity, image size,
                                  splits with their rows, shard_rows, batch_size)
      <split>-NNNNN.npy           shard NNNNN: the split's rows [NNNNN*N, (NNNNN+1)*N) as a
                                  float16 (rows, P, D) .npy (np.load(..., mmap_mode="r"))
      <split>-NNNNN.rows.jsonl    one JSON object a row: image_id, n_objects, scene
      index.json                  written last: format "strop-feature-cache", version 2,
                                  teacher, teacher_identity, image_size, patch_size,
                                  n_patches, dim, dtype, and per split n, shape and shards
                                  (file, rows_file, rows, sha256, rows_sha256)

The single-file cache (version 1, no `format` key; `write_features` still writes it)::

    CACHE/
      index.json            teacher, image_size, patch_size, n_patches, dim, dtype, and per split:
                            n, file, shape, image_ids, n_objects
      <split>.f16           (n, P, D) float16, C order, a raw np.memmap
      <split>.scenes.jsonl  one JSON string per image (the CLEVR scene, "" when unknown)

Design decisions
- fp16, not parquet: a training item is one contiguous (P, D) slice read with no decoding,
  and the page cache makes repeated epochs free. fp16 halves the disk footprint; teacher
  features are LayerNorm outputs of moderate range, well inside fp16. A shard is an .npy
  (a raw memmap behind a header that states its shape), so a shard names its own shape.
- Readers of the sharded form check each shard's header and size, not its sha256: hashing
  a paper-scale cache (ImageNet at DINOv3-S: ~190 GB) at every training start would cost
  minutes; the sums in index.json are for `sha256sum`-style audits.
- Single-file form: one folder holds several splits; `index.json` is rewritten atomically
  after each split's memmap is complete (written under a temporary name, then renamed), so
  an interrupted run never leaves an index pointing at half a file. A split's files are
  one unit: before its `.f16` and `.scenes.jsonl` are replaced, the index is rewritten
  without the split, and only after both are in place with it, so a kill in between leaves
  a split that readers refuse ("no split"), never new features beside the old image ids.
- A cache records the teacher and image size it was made with; `FeatureCacheDataset.check`
  refuses a model config that disagrees, naming both values.
- Items mirror the image datasets' (`index`, `image_id`, `n_objects`, `scene`) plus `feats`
  (float16 (P, D)). Given the image dataset as `images=`, items are that dataset's items with
  `feats` added (for the pixel probe, which needs the images too).
- Memmaps (and a shard's rows) are opened lazily in each process, so DataLoader workers do
  not inherit a handle.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from strop.atomic import atomic_write, atomic_write_text, refuse_non_regular
from strop.jsonfile import read_json_object

INDEX_FILE = "index.json"
PLAN_FILE = "plan.json"
#: the sharded form's index.json `format` and `version`; an index without `format` is version 1
CACHE_FORMAT = "strop-feature-cache"
CACHE_VERSION = 2


class FeatureCacheError(ValueError):
    """A feature cache folder that cannot be used; the message is one line."""


def read_index(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(cache_dir) / INDEX_FILE
    if not path.is_file() and (Path(cache_dir) / PLAN_FILE).is_file():
        raise FeatureCacheError(
            f"{path}: not written yet: the `strop cache-features` that writes this cache did "
            "not finish; rerun the same command to resume it"
        )
    if not path.is_file():
        raise FeatureCacheError(
            f"{path}: no feature cache here; write one with `strop cache-features --data DIR --teacher T --out {cache_dir}`"
        )
    index = read_json_object(path, FeatureCacheError)
    if "format" in index and (
        index["format"] != CACHE_FORMAT or index.get("version") != CACHE_VERSION
    ):
        raise FeatureCacheError(
            f"{path}: format {index['format']!r} version {index.get('version')!r}; expected "
            f"{CACHE_FORMAT!r} version {CACHE_VERSION} (or a single-file cache)"
        )
    return index


def is_sharded(index: dict[str, Any]) -> bool:
    """Whether an index.json describes the sharded form (version 2)."""
    return index.get("format") == CACHE_FORMAT


def write_features(
    dataset: Dataset,
    teacher: torch.nn.Module,
    out: str | os.PathLike[str],
    split: str,
    image_size: int,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    source: str = "",
) -> Path:
    """Run `teacher` over `dataset` once and store its patch tokens under `out`; returns the memmap."""
    from strop.data.datasets import collate
    from strop.data.workers import parent_watch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = read_index(out) if (out / INDEX_FILE).is_file() else {}
    if is_sharded(index) or (out / PLAN_FILE).is_file():
        raise FeatureCacheError(
            f"{out}: holds a sharded feature cache (strop cache-features); write_features adds "
            "splits to single-file caches only: use another out"
        )
    name = getattr(teacher, "teacher_name", type(teacher).__name__)
    for key, value in (("teacher", name), ("image_size", image_size)):
        if index and index.get(key) != value:
            raise FeatureCacheError(
                f"{out / INDEX_FILE}: cache was made with {key}={index.get(key)!r}, now {value!r}; use another --out"
            )
    for output in (f"{split}.f16", f"{split}.scenes.jsonl", INDEX_FILE):
        refuse_non_regular(out / output)  # before the encode; os.replace would replace it
    n = len(dataset)  # type: ignore[arg-type]  # map-style: torch's stub lacks __len__
    if n == 0:
        raise FeatureCacheError(
            f"feature cache: split {split!r} of {source or 'the dataset'} has no images"
        )
    teacher = teacher.to(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=parent_watch() if num_workers > 0 else None,
    )
    final = out / f"{split}.f16"
    image_ids: list[str] = []
    n_objects: list[int] = []
    scenes: list[str] = []
    shape: list[int] = []

    def encode(tmp: str) -> None:
        memmap: np.memmap | None = None
        row = 0
        with _progress(progress, f"caching {split} features ({name})", n) as advance:
            for batch in loader:
                feats = teacher(batch["image"].to(device)).float().cpu().numpy()
                feats = feats.astype(np.float16)
                if memmap is None:
                    memmap = np.memmap(tmp, np.float16, "w+", shape=(n, *feats.shape[1:]))
                memmap[row : row + len(feats)] = feats
                row += len(feats)
                image_ids.extend(batch["image_id"])
                n_objects.extend(int(v) for v in batch["n_objects"])
                scenes.extend(s or "" for s in batch["scene"])
                advance(len(feats))
        assert memmap is not None
        memmap.flush()
        shape.extend(memmap.shape)
        del memmap
        # The split's files are replaced while the index does not list the split, so a kill
        # between the two replacements leaves a split readers refuse, never one whose
        # features and image ids come from two writes (module docstring).
        if split in index.get("splits", {}):
            del index["splits"][split]
            atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=1))

    atomic_write(final, encode)
    atomic_write_text(out / f"{split}.scenes.jsonl", "".join(json.dumps(s) + "\n" for s in scenes))
    index.update(
        teacher=name,
        image_size=image_size,
        patch_size=getattr(teacher, "patch_size", None),
        n_patches=shape[1],
        dim=shape[2],
        dtype="float16",
    )
    index.setdefault("splits", {})[split] = {
        "n": n,
        "file": final.name,
        "shape": shape,
        "source": source,
        "image_ids": image_ids,
        "n_objects": n_objects,
    }
    atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=1))
    return final


class _progress:
    """A rich progress bar (or nothing) as a context manager yielding `advance(n)`."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()


class FeatureCacheDataset(Dataset):
    """Cached teacher features of one split; items carry `feats` (P, D) float16.

    Reads both layouts (module docstring): the sharded cache `strop cache-features` writes and
    the single-file cache of `write_features`.

    Args:
        cache_dir: folder written by `strop cache-features` or `write_features`.
        split: which split.
        images: optional image dataset of the same split; items are then its items plus `feats`.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], split: str = "train", images: Dataset | None = None
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.index = read_index(cache_dir)
        splits = self.index.get("splits", {})
        if split not in splits:
            raise FeatureCacheError(
                f"{self.cache_dir / INDEX_FILE}: no split {split!r} (has {', '.join(sorted(splits)) or 'none'}); "
                f"run `strop cache-features ... --split {split}`"
            )
        self.split = split
        self.entry = splits[split]
        self.shape = tuple(self.entry["shape"])
        self.sharded = is_sharded(self.index)
        if self.sharded:
            self.path = self.cache_dir / INDEX_FILE
            self.shards = [self.cache_dir / s["file"] for s in self.entry["shards"]]
            rows = [int(s["rows"]) for s in self.entry["shards"]]
            for path, n in zip(self.shards, rows, strict=True):
                _check_shard(path, (n, *self.shape[1:]))
            self.starts = np.cumsum([0, *rows])[:-1].tolist()
            if sum(rows) != self.shape[0]:
                raise FeatureCacheError(
                    f"{self.path}: split {split!r} lists {sum(rows)} rows in its shards, "
                    f"{self.shape[0]} in its shape; re-run `strop cache-features --replace`"
                )
        else:
            self.path = self.cache_dir / self.entry["file"]
            expected = int(np.prod(self.shape)) * 2
            actual = self.path.stat().st_size if self.path.is_file() else -1
            if actual != expected:
                raise FeatureCacheError(
                    f"{self.path}: expected {expected} bytes for float16 {self.shape}, found "
                    f"{'no file' if actual < 0 else f'{actual} bytes'}; re-run `strop cache-features`"
                )
        # map-style datasets define __len__; torch's Dataset stub does not declare it
        n_images = None if images is None else len(images)  # type: ignore[arg-type]
        if n_images is not None and n_images != self.shape[0]:
            raise FeatureCacheError(
                f"{self.path}: {self.shape[0]} cached images but the image dataset has {n_images}"
            )
        self.images = images
        self.teacher = self.index["teacher"]
        self.image_size = self.index["image_size"]
        self._memmap: np.memmap | None = None
        self._scenes: list[str] | None = None
        self._shard_arrays: dict[int, np.ndarray] = {}
        self._shard_rows: dict[int, list[dict[str, Any]]] = {}

    def check(self, model_cfg: Any) -> None:
        """Raise if the cache was made with another teacher, image size or grid than `model_cfg`."""
        for key, cached, wanted in (
            ("teacher", self.teacher, model_cfg.teacher),
            ("image_size", self.image_size, model_cfg.image_size),
            ("n_patches", self.shape[1], model_cfg.n_patches),
        ):
            if cached != wanted:
                raise FeatureCacheError(
                    f"{self.cache_dir / INDEX_FILE}: cached with {key}={cached!r}, the model wants {wanted!r}"
                )

    def __len__(self) -> int:
        return self.shape[0]

    def _locate(self, i: int) -> tuple[int, int]:
        """(shard, row within it) of item `i` of the sharded form."""
        j = bisect.bisect_right(self.starts, i) - 1
        return j, i - self.starts[j]

    def _features(self, i: int) -> torch.Tensor:
        if self.sharded:
            j, row = self._locate(i)
            if j not in self._shard_arrays:
                self._shard_arrays[j] = np.load(self.shards[j], mmap_mode="r")
            return torch.from_numpy(np.array(self._shard_arrays[j][row]))
        if self._memmap is None:
            self._memmap = np.memmap(self.path, np.float16, "r", shape=self.shape)
        return torch.from_numpy(np.array(self._memmap[i]))

    def _row(self, i: int) -> dict[str, Any]:
        """Item `i`'s image_id, n_objects and scene in the sharded form."""
        j, row = self._locate(i)
        if j not in self._shard_rows:
            path = self.cache_dir / self.entry["shards"][j]["rows_file"]
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
            if len(lines) != self.entry["shards"][j]["rows"]:
                raise FeatureCacheError(
                    f"{path}: {len(lines)} rows, {INDEX_FILE} says "
                    f"{self.entry['shards'][j]['rows']}; re-run `strop cache-features --replace`"
                )
            self._shard_rows[j] = [json.loads(line) for line in lines]
        return self._shard_rows[j][row]

    def _scene(self, i: int) -> str:
        if self._scenes is None:
            path = self.cache_dir / f"{self.split}.scenes.jsonl"
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
            self._scenes = [json.loads(line) for line in lines] or [""] * len(self)
        return self._scenes[i]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: index {i} out of range 0..{len(self) - 1}")
        if self.images is not None:
            item = dict(self.images[i])
        elif self.sharded:
            row = self._row(i)
            item = {
                "index": int(i),
                "image_id": row["image_id"],
                "n_objects": int(row["n_objects"]),
                "scene": row["scene"],
            }
        else:
            item = {
                "index": int(i),
                "image_id": self.entry["image_ids"][i],
                "n_objects": int(self.entry["n_objects"][i]),
                "scene": self._scene(i),
            }
        item["feats"] = self._features(i)
        return item


def _check_shard(path: Path, shape: tuple[int, ...]) -> None:
    """A shard's .npy is there, float16 of `shape`, and as long as its header says: a
    truncated or replaced shard is refused at open, not read as zeros or garbage."""
    if not path.is_file():
        raise FeatureCacheError(
            f"{path}: shard listed in {INDEX_FILE} is missing; re-run `strop cache-features`"
        )
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            found, fortran, dtype = read(handle)
        except ValueError as err:
            raise FeatureCacheError(f"{path}: not an .npy file ({err})") from None
        offset = handle.tell()
    expected = offset + int(np.prod(shape)) * 2
    size = path.stat().st_size
    wrong = fortran or np.dtype(dtype) != np.float16 or tuple(found) != shape
    if wrong or size != expected:
        raise FeatureCacheError(
            f"{path}: expected float16 {shape} in {expected} bytes, found {np.dtype(dtype)} "
            f"{tuple(found)} in {size} bytes; re-run `strop cache-features --replace`"
        )
