"""Training throughput: images/s with cached teacher features against the online teacher.

`run(quick=False) -> list[dict]` rows `name`, `value`, `unit`, `baseline`, `ratio`
(ratio = value / baseline: higher is better for throughput).

What is measured: the real trainer loop (`Trainer.batches` then `Trainer.train_step`: data
loading, curriculum with probes, forward, loss, backward, AdamW, codebook update) on a
synthetic CLEVR-like set, held in phase 2 (the costliest phase: the interpreter runs on three
length vectors). The online run decodes images and runs the teacher (`random-vit`, the DINOv3
architecture with random weights: no download) every step; the cached run reads the same
images' features from a real `strop.model.feature_cache` folder written first. The pixel probe is
off in both (with a cache it would need the images again).

CPU: preset `tiny` at 64 px, batch 8. CUDA (when present): preset S at 224 px, batch 32, bf16
autocast, plus peak GPU memory; the paper's run reached about 165 images/s (500k steps of
batch 32 in 27 h on one H100), reported as the baseline of the online row.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PAPER_IMAGES_PER_S = 500_000 * 32 / (27 * 3600)


def _config(data: Path, preset: str, batch: int, image_size: int, workers: int) -> Any:
    from strop.training.config import make_run_config

    sets = [
        f"model.image_size={image_size}",
        "curriculum.phase_steps=0,100000,100000,100000",  # phase 2 from step 0
        "train.pixel_decoder=false",
        f"train.num_workers={workers}",
        "train.val_every=0",
    ]
    return make_run_config(data, preset, "random-vit", batch_size=batch, overrides=sets)


def _images_per_s(cfg: Any, out: Path, steps: int) -> tuple[float, Any]:
    from strop.training.trainer import Trainer

    trainer = Trainer(cfg, out, progress=False)
    batches = trainer.batches()
    trainer.train_step(next(batches))  # warm-up: allocations, kernel selection, workers
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    if cuda:
        torch.cuda.synchronize()
    return steps * cfg.train.batch_size / (time.perf_counter() - start), trainer


def run(quick: bool = False) -> list[dict[str, Any]]:
    from strop.data.datasets import build_dataset
    from strop.data.renderer import generate_dataset
    from strop.model.feature_cache import write_features
    from strop.training.config import apply_overrides

    cuda = torch.cuda.is_available()
    preset, batch, size, workers = ("S", 32, 224, 4) if cuda else ("tiny", 8, 64, 0)
    steps = (10 if quick else 40) if cuda else (4 if quick else 12)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        generate_dataset(data, n=batch * (steps + 2) + 8, size=size, seed=0, progress=False)
        cfg = _config(data, preset, batch, size, workers)
        online, trainer = _images_per_s(cfg, Path(tmp) / "online", steps)
        memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        images = build_dataset(data, "train", size)
        write_features(
            images,
            trainer.model.teacher,
            cache,
            "train",
            size,
            batch_size=batch,
            device=trainer.device,
            progress=False,
            source=str(data),
        )
        del trainer
        cached_cfg = apply_overrides(cfg, [f"data.feature_cache={cache}"])
        cached, _ = _images_per_s(cached_cfg, Path(tmp) / "cached", steps)
        where = f"{preset}, {size}px, batch {batch}, {'cuda bf16' if cuda else 'cpu fp32'}"
        paper = PAPER_IMAGES_PER_S if cuda else None
        rows.append(
            _row(f"train images/s, online random-vit teacher ({where})", online, "img/s", paper)
        )
        rows.append(
            _row(f"train images/s, cached teacher features ({where})", cached, "img/s", online)
        )
        if cuda:
            rows.append(_row(f"peak GPU memory, online teacher ({where})", memory, "GiB", None))
    return rows


def _row(name: str, value: float, unit: str, baseline: float | None) -> dict[str, Any]:
    ratio = value / baseline if baseline else None
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
