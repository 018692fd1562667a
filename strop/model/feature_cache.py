"""Frozen teacher features written once to disk and read back (paper Sec. 2.1 "Encoder").

Layout of a cache folder::

    CACHE/
      index.json            teacher, image_size, patch_size, n_patches, dim, dtype, and per split:
                            n, file, shape, image_ids, n_objects
      <split>.f16           (n, P, D) float16, C order, a raw np.memmap
      <split>.scenes.jsonl  one JSON string per image (the CLEVR scene, "" when unknown)

Design decisions
- fp16 raw memmaps, not npz/parquet: a training item is one contiguous (P, D) slice read with
  no decoding, and the page cache makes repeated epochs free. fp16 halves the disk footprint;
  teacher features are LayerNorm outputs of moderate range, well inside fp16.
- One folder holds several splits; `index.json` is rewritten atomically after each split's
  memmap is complete (written under a temporary name, then renamed), so an interrupted run
  never leaves an index pointing at half a file. A split's files are one unit: before its
  `.f16` and `.scenes.jsonl` are replaced, the index is rewritten without the split, and
  only after both are in place with it, so a kill in between leaves a split that readers
  refuse ("no split"), never new features beside the old image ids.
- A cache records the teacher and image size it was made with; `FeatureCacheDataset.check`
  refuses a model config that disagrees, naming both values.
- Items mirror the image datasets' (`index`, `image_id`, `n_objects`, `scene`) plus `feats`
  (float16 (P, D)). Given the image dataset as `images=`, items are that dataset's items with
  `feats` added (for the pixel probe, which needs the images too).
- The memmap is opened lazily in each process, so DataLoader workers do not inherit a handle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from strop.atomic import atomic_write_text, refuse_non_regular

INDEX_FILE = "index.json"


class FeatureCacheError(ValueError):
    """A feature cache folder that cannot be used; the message is one line."""


def read_index(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(cache_dir) / INDEX_FILE
    if not path.is_file():
        raise FeatureCacheError(
            f"{path}: no feature cache here; write one with `strop cache-features --data DIR --teacher T --out {cache_dir}`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FeatureCacheError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err


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
    tmp = out / f".{split}.f16.tmp"
    memmap: np.memmap | None = None
    image_ids: list[str] = []
    n_objects: list[int] = []
    scenes: list[str] = []
    row = 0
    with _progress(progress, f"caching {split} features ({name})", n) as advance:
        for batch in loader:
            feats = teacher(batch["image"].to(device)).float().cpu().numpy().astype(np.float16)
            if memmap is None:
                memmap = np.memmap(tmp, np.float16, "w+", shape=(n, *feats.shape[1:]))
            memmap[row : row + len(feats)] = feats
            row += len(feats)
            image_ids += list(batch["image_id"])
            n_objects += [int(v) for v in batch["n_objects"]]
            scenes += [s or "" for s in batch["scene"]]
            advance(len(feats))
    assert memmap is not None
    memmap.flush()
    shape = list(memmap.shape)
    del memmap
    # The split's files are replaced while the index does not list the split, so a kill
    # between the two replacements leaves a split readers refuse, never one whose features
    # and image ids come from two writes (module docstring).
    if split in index.get("splits", {}):
        del index["splits"][split]
        atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=1))
    os.replace(tmp, final)
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

    Args:
        cache_dir: folder written by `write_features` / `strop cache-features`.
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
        self.path = self.cache_dir / self.entry["file"]
        self.shape = tuple(self.entry["shape"])
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

    def _features(self, i: int) -> torch.Tensor:
        if self._memmap is None:
            self._memmap = np.memmap(self.path, np.float16, "r", shape=self.shape)
        return torch.from_numpy(np.array(self._memmap[i]))

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
        else:
            item = {
                "index": int(i),
                "image_id": self.entry["image_ids"][i],
                "n_objects": int(self.entry["n_objects"][i]),
                "scene": self._scene(i),
            }
        item["feats"] = self._features(i)
        return item
