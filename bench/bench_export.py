"""Benchmark of `strop export` at scale (issue 28 item 6): throughput per process, 1 vs 2
processes under torchrun (gloo, CPU), and peak memory of the sharded export vs the one file.

Setup (nothing downloaded): a synthetic CLEVR-like set of `images` images (default 4,096) at 64 px (half
train, half val), and a tiny run trained on it for a few steps with the real trainer
(`strop train --preset tiny --teacher pixels --k 16`). Each export is the real console
command in a child process (`bench.measure`: wall time, CPU time, peak RSS), `--device cpu`,
one torch thread per process, splits train,val:
- `single`: one process, `--shard-rows` above the image count, so today's one-file form;
- `sharded`: one process, `--shard-rows images/8`: the streaming programs dataset;
- `torchrun`: `python -m torch.distributed.run --standalone --nproc_per_node 2 -m strop.cli
  export ...` with the same shards, each rank writing its own;
- `startup`: the sharded command with `--limit 1` (imports, model load, one batch), which
  `encode throughput` subtracts so the row measures encoding, not Python starting.
The torchrun dataset must equal the one-process one (the manifests' shard lists: files, rows
and sha256), a row of its own. `ratio` is per row: for throughput and speed-up value /
baseline (higher is better), for memory value / baseline (below 1: less than the baseline).
On a machine shared with other work the wall-time rows carry that load; the CPU-time rows
(`cpu`) much less so. Two processes on two cores speed up by at most 2.
`STROP_BENCH_EXPORT_IMAGES` and `STROP_BENCH_EXPORT_STEPS` set the sizes where given (tests).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import Measured, measure

IMAGES, QUICK_IMAGES = 4096, 32
TRAIN_STEPS = 5


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_run(root: Path, images: int, steps: int = TRAIN_STEPS) -> Path:
    """A synthetic image set and a tiny run trained on it for `steps` steps; the run folder."""
    from strop.data.renderer import generate_dataset

    generate_dataset(root / "data", n=images, size=64, seed=0, splits=(0.5, 0.5, 0.0),
                     progress=False)  # fmt: skip
    strop = str(Path(sys.executable).with_name("strop"))
    measure([strop, "train", "--data", str(root / "data"), "--preset", "tiny", "--teacher",
             "pixels", "--k", "16", "--out", str(root / "run"), "--steps", str(steps),
             "--batch-size", str(min(8, images // 2)), "--no-progress"], env=_env())  # fmt: skip
    return root / "run"


def export_command(run: Path, out: Path, shard_rows: int, *extra: str) -> list[str]:
    return ["-m", "strop.cli", "export", str(run), "--split", "train,val", "--device", "cpu",
            "--batch-size", "16", "--shard-rows", str(shard_rows), "--out", str(out), *extra]  # fmt: skip


def _manifest_shards(folder: Path) -> list[dict[str, Any]]:
    return json.loads((folder / "manifest.json").read_text())["shards"]


def _row(key: str, name: str, value: float, unit: str, baseline: float | None = None) -> dict:
    row: dict[str, Any] = {"key": key, "name": name, "value": round(value, 3), "unit": unit}
    if baseline is not None:
        row["baseline"] = round(baseline, 3)
        row["ratio"] = round(value / baseline, 3) if baseline else None
    return row


def run(quick: bool = False, images: int | None = None, work_dir: Path | None = None) -> list[dict]:
    """Rows of this benchmark; every file goes to a temporary folder (under `work_dir`)."""
    from bench.measure import env_int

    images = images or env_int("STROP_BENCH_EXPORT_IMAGES") or (QUICK_IMAGES if quick else IMAGES)
    steps = env_int("STROP_BENCH_EXPORT_STEPS") or TRAIN_STEPS
    shard_rows = max(1, images // 8)
    py = [sys.executable]
    torchrun = py + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="bench_export_") as tmp:
        root = Path(tmp)
        run_dir = make_run(root, images, steps)
        single = measure(py + export_command(run_dir, root / "single.parquet", images + 1), _env())
        sharded = measure(py + export_command(run_dir, root / "one.parquet", shard_rows), _env())
        ranks = measure(
            torchrun + export_command(run_dir, root / "two.parquet", shard_rows), _env()
        )
        startup = measure(
            py + export_command(run_dir, root / "startup.parquet", shard_rows, "--limit", "1"),
            _env(),
        )
        if not (root / "single.parquet").is_file():
            raise RuntimeError(f"{root / 'single.parquet'}: the one-file export wrote no file")
        same = _manifest_shards(root / "one") == _manifest_shards(root / "two")

    def per_process(m: Measured, processes: int) -> float:
        return images / processes / m.seconds

    encode_seconds = max(sharded.seconds - startup.seconds, 1e-9)
    encode_cpu = max(sharded.cpu_seconds - startup.cpu_seconds, 1e-9)
    what = f"{images} images (64 px, tiny run, K=16), 1 torch thread per process"
    return [
        _row(
            "one_process_images_per_s",
            f"strop export, 1 process, whole command, {what}",
            per_process(sharded, 1),
            "images/s",
        ),
        _row(
            "one_process_encode_images_per_s",
            "strop export, 1 process, encoding only (wall minus a --limit 1 run's)",
            (images - 1) / encode_seconds,
            "images/s",
        ),
        _row(
            "one_process_encode_images_per_cpu_s",
            "strop export, 1 process, encoding only, per CPU second",
            (images - 1) / encode_cpu,
            "images/cpu-s",
        ),
        _row(
            "torchrun_images_per_s_per_process",
            "torchrun 2 gloo processes, whole command, per process, vs 1 process",
            per_process(ranks, 2),
            "images/s",
            per_process(sharded, 1),
        ),
        _row(
            "torchrun_speedup",
            "torchrun 2 processes vs 1: whole-command speed-up (1-process wall / 2-process wall)",
            sharded.seconds / ranks.seconds,
            "x",
            2.0,
        ),
        _row(
            "torchrun_cpu_seconds",
            "torchrun 2 processes vs 1: CPU seconds of the whole command",
            ranks.cpu_seconds,
            "cpu-s",
            sharded.cpu_seconds,
        ),
        _row(
            "torchrun_equals_one_process",
            "torchrun dataset equals the 1-process dataset (shard files, rows, sha256)",
            float(same),
            "bool",
        ),
        _row(
            "sharded_peak_rss",
            f"peak RSS, sharded export (--shard-rows {shard_rows}) vs one-file export, same input",
            sharded.peak_rss_mib,
            "MiB",
            single.peak_rss_mib,
        ),
        _row(
            "torchrun_rank_peak_rss",
            "peak RSS of the largest torchrun process vs one-file export",
            ranks.peak_rss_mib,
            "MiB",
            single.peak_rss_mib,
        ),
    ]


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    for row in run(quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
