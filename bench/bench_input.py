"""The input pipeline on this machine: how many cores would feed a GPU.

`run(quick=False) -> list[dict]` rows `name`, `value`, `unit`, `baseline`, `ratio`.

Rows
- Decoding real CLEVR v1.0 PNGs (480 x 320, `../shared/clevr-real`; skipped when absent) to
  224-px float tensors with the training path (`strop.data.datasets.load_image`: PIL decode,
  RGB, bicubic resize), in one process: images/s per worker process, and the cores that
  would feed 3,000 images/s (the online-teacher target; no scaling loss assumed, so it is
  a floor). The baseline is the decode alone (no resize, no tensor), to show where the time
  goes.
- Reading a feature cache (`strop.model.feature_cache`, DINOv3-S at 224 px: 196 x 384 fp16,
  147 KiB per image) through `FeatureCacheDataset` and the trainer's collate, in one
  process: images/s and MiB/s per worker process, and the cores for 10,000 images/s (about
  25% MFU for STROP-S on an H100). The file was just written, so it is read from the page
  cache: this is the CPU cost of a read, not the disk's speed.

`python -m bench.bench_input` prints the rows.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

REAL_CLEVR = Path(__file__).resolve().parents[2] / "shared" / "clevr-real"
DECODE_TARGET = 3_000  # img/s: the online-teacher target (issue 22)
CACHE_TARGET = 10_000  # img/s: STROP-S at ~25% MFU from cached features on an H100


def real_clevr_pngs(root: Path = REAL_CLEVR) -> list[Path]:
    return sorted(root.glob("CLEVR_v1.0/images/*/*.png"))


def decode_rows(paths: list[Path], size: int = 224) -> list[dict[str, Any]]:
    """Images/s of one process decoding `paths` to (3, size, size) tensors, and of the decode alone."""
    from PIL import Image

    from strop.data.datasets import load_image

    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB").load()
    decode_only = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in paths:
        load_image(path, size, where=str(path))
    full = len(paths) / (time.perf_counter() - start)
    with Image.open(paths[0]) as first:
        frame = f"{first.width}x{first.height}"
    cores = math.ceil(DECODE_TARGET / full)
    return [
        _row(
            f"decode real CLEVR PNG {frame} -> {size}px tensor, per worker process "
            f"(baseline: decode only; {len(paths)} images)",
            full,
            "img/s",
            decode_only,
        ),
        _row(f"cores to decode {DECODE_TARGET:,} img/s at {size}px", cores, "cores", None),
    ]


class _Blank(Dataset):
    """`n` items with the keys the feature-cache writer reads (the features come from
    `_Features`, so the images can be tiny)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "image": torch.zeros(3, 16, 16),
            "index": i,
            "image_id": f"img_{i:06d}",
            "n_objects": -1,
            "scene": "",
        }


class _Features(torch.nn.Module):
    """Random features of DINOv3-S's shape at 224 px (196 patches x 384)."""

    teacher_name = "dinov3-s"
    patch_size = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(images.shape[0], 196, 384)


def cache_rows(n: int) -> list[dict[str, Any]]:
    from strop.model.feature_cache import FeatureCacheDataset, write_features
    from strop.training.data import collate

    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        write_features(_Blank(n), _Features(), tmp, "train", 224, batch_size=256, progress=False)
        dataset = FeatureCacheDataset(tmp, "train")
        loader = DataLoader(dataset, batch_size=64, num_workers=0, collate_fn=collate)
        start = time.perf_counter()
        nbytes = 0
        for batch in loader:
            nbytes += batch["feats"].numel() * 2
        elapsed = time.perf_counter() - start
    rate = n / elapsed
    return [
        _row(
            f"feature cache read, DINOv3-S 224px (196x384 fp16), per worker process ({n} items, "
            "page cache)",
            rate,
            "img/s",
            None,
        ),
        _row(
            "feature cache read bandwidth, per worker process",
            nbytes / elapsed / 2**20,
            "MiB/s",
            None,
        ),
        _row(
            f"cores to read {CACHE_TARGET:,} img/s from the cache",
            math.ceil(CACHE_TARGET / rate),
            "cores",
            None,
        ),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    paths = real_clevr_pngs()
    if paths:
        rows += decode_rows(paths[: 24 if quick else 200])
    else:
        rows.append(_row(f"decode real CLEVR PNG: skipped ({REAL_CLEVR} absent)", None, "", None))
    rows += cache_rows(256 if quick else 2048)
    return rows


def _row(name: str, value: float | None, unit: str, baseline: float | None) -> dict[str, Any]:
    ratio = value / baseline if baseline and value is not None else None
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


if __name__ == "__main__":
    for row in run():
        print(row)
