"""`python -m bench gpu`: one call on one CUDA device measures the training step, all of it.

    python -m bench gpu [--dry-run] [--json PATH] [--only TEXT] [--budget-s S]

Rows: STROP-S (teacher DINOv3-S shape) and STROP-M (DINOv3-B shape), each with (a) cached
teacher features and (b) the teacher online, each eager and `torch.compile`d, in bf16
autocast with the split attention layout; plus STROP-S cached in the masked (reference)
layout, and the feature cache's read rate from disk. Columns: batch (the largest of a short
list that fits; each batch that ran out of memory is listed, a recorded result, not a
crash), images/s, achieved TFLOP/s, MFU against the device's dense bf16 peak
(`strop.training.mfu`; n/a for devices not in its table, and on CPU), peak memory, host syncs
per step (`torch.cuda.set_sync_debug_mode`, CUDA only; the trainer's one read of the
finite/stop flags per log interval is not in it), host reads per step (`host_reads`: the
Python-level reads of tensor values that `strop.testing.host_reads.count_host_reads` counts,
on any device, so `--dry-run` shows it on CPU; AdamW's own reads of its CPU step counts are
left out), and warm-up seconds (compilation).

Design decisions
- The step timed is the trainer's own (`Trainer.train_step`: curriculum in phase 2, the
  costliest, with its probe rows; loss; backward; AdamW; codebook EMA and restarts) on one
  batch taken from the trainer's own loader and kept on the device: the row measures the
  GPU step, and the input pipeline is measured apart (the cache-read row here,
  `bench.bench_input` for PNG decoding), so a slow disk cannot hide in a step figure.
- Teachers have random weights but the real architecture: a `DINOv3ViTConfig` of the S/16 or
  B/16 shape is instantiated and saved to a folder that the model loads as `dinov3-s` /
  `dinov3-b` through `model.teacher_path`, the code path real weights take.
- Time is bounded by construction: each row gets a share of `--budget-s` (default 420 s, so
  the whole call stays under 8 minutes on an H100 with compilation), a row times at most
  `timed_s` seconds, and a row that would start after the budget is reported as skipped.
- `--dry-run` runs every row on the same code at toy size (32 px images, a 1-layer model and
  teacher, batches of 4 and 2) on whatever device there is; on CPU `torch.compile` uses the
  `eager` backend: Dynamo captures the graphs (graph breaks, guards, recompiles: what breaks
  first) without Inductor's minutes of C++ compilation, which a 2-core CI box cannot afford. Toy-size FLOP/s count the teacher by its name's full size, so
  they are only there to print the column.
- Exit status 1 names every row that failed (an exception other than out-of-memory); 2 when
  there is no CUDA device and `--dry-run` was not given.
- The command line is checked before the first row, in one `error:` line each: a flag
  argparse refuses, `--only` text that names no row, a `--budget-s` that is not a positive
  number (exit 2), a `--json` file that cannot be written (exit 1; it used to fail with a
  traceback after the whole run): in a folder that does not exist (it is not created), or
  a path that is not a regular file (a FIFO hung the call; `/dev/null` was replaced). The
  JSON is written atomically.
- A budget spent before any training row ran is exit 1, after the table: nothing was
  measured (`--budget-s 1e-300` exited 0 with every row skipped).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from bench.gpu_setup import DRY, FULL, TEACHERS, Scale, Setup, prepare

#: the setup's names stay importable from here (`bench.gpu_setup` holds them)
__all__ = [
    "CACHE_ROW",
    "COLUMNS",
    "DRY",
    "FULL",
    "ROWS",
    "Row",
    "RowSpec",
    "Scale",
    "Setup",
    "cache_read_row",
    "check_options",
    "failures",
    "main",
    "measure",
    "prepare",
    "run",
    "run_row",
]


@dataclass(frozen=True)
class RowSpec:
    """One training configuration to measure."""

    preset: str
    source: str  # "cached" | "online"
    compiled: bool
    layout: str = "split"

    @property
    def name(self) -> str:
        mode = "compiled" if self.compiled else "eager"
        return f"STROP-{self.preset} {self.source} {mode} {self.layout}"


ROWS: tuple[RowSpec, ...] = (
    *(
        RowSpec(preset, source, compiled)
        for preset in ("S", "M")
        for source in ("cached", "online")
        for compiled in (False, True)
    ),
    RowSpec("S", "cached", False, "masked"),
)

#: The name the feature-cache rows start with (they run whatever the time budget).
CACHE_ROW = "feature cache read"
COLUMNS = (
    "row",
    "status",
    "batch",
    "images_per_s",
    "tflops",
    "mfu",
    "peak_mem_gib",
    "syncs_per_step",
    "host_reads",
    "warmup_s",
    "oom_batches",
)


@dataclass
class Row:
    """One measured row (every column is present; None prints as n/a)."""

    row: str
    status: str = "ok"
    batch: int | None = None
    images_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    peak_mem_gib: float | None = None
    syncs_per_step: float | None = None
    host_reads: float | None = None
    warmup_s: float | None = None
    oom_batches: list[int] = field(default_factory=list)
    note: str = ""


# --------------------------------------------------------------------------- one row


def _config(spec: RowSpec, setup: Setup, batch: int) -> Any:
    from strop.training.config import make_run_config

    teacher = TEACHERS[spec.preset]
    sets = [
        f"model.image_size={setup.scale.image_size}",
        f"model.teacher_path={setup.teachers[teacher]}",
        f"model.attention={spec.layout}",
        *setup.scale.model_sets,
        "curriculum.phase_steps=0,100000,100000,100000",  # phase 2 from step 0: the costliest
        "train.pixel_decoder=false",
        "train.num_workers=0",
        "train.val_every=0",
        "train.precision=bf16",
        f"train.compile={str(spec.compiled).lower()}",
        f"train.device={setup.device.type}",
    ]
    if spec.source == "cached":
        sets.append(f"data.feature_cache={setup.caches[teacher]}")
    return make_run_config(setup.data, spec.preset, teacher, batch_size=batch, overrides=sets)


def _on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _count_syncs(step: Any, steps: int) -> float:
    """Host syncs per step, as CUDA's sync debug mode reports them (one warning each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs) / steps


def _count_host_reads(step: Any, steps: int) -> float:
    """Python-level reads of tensor values per step (`strop.testing.host_reads`), AdamW's
    own left out (the non-fused AdamW reads its CPU step counts; the fused one, which the
    trainer builds on CUDA, keeps them on the device)."""
    from strop.testing.host_reads import OPTIMIZER_SITES, count_host_reads

    with count_host_reads() as reads:
        for _ in range(steps):
            step()
    return reads.count_excluding(OPTIMIZER_SITES) / steps


def measure(spec: RowSpec, setup: Setup, batch: int, row: Row) -> None:
    """Fill `row` with the measurements of `spec` at `batch` (raises OutOfMemoryError)."""
    from strop.devices import synchronize
    from strop.training.mfu import mfu, peak_bf16_flops, training_flops_per_image
    from strop.training.trainer import Trainer

    scale, device = setup.scale, setup.device
    cfg = _config(spec, setup, batch)
    out = setup.root / "runs" / f"{spec.name.replace(' ', '-')}-b{batch}"
    trainer = Trainer(cfg, out, progress=False)
    try:
        if spec.compiled and setup.compile_backend is not None:
            trainer.compile_forward(setup.compile_backend)
        data = _on_device(next(trainer.batches()), device)

        def step() -> None:
            trainer.train_step(data)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(scale.warmup_steps):
            step()
        synchronize(device)
        row.warmup_s = time.perf_counter() - start
        steps, start = 0, time.perf_counter()
        while steps < scale.max_steps and (
            steps < scale.min_steps or time.perf_counter() - start < scale.timed_s
        ):
            step()
            steps += 1
        trainer.check_pending()  # the finite/stop flags, read once per log interval in training
        synchronize(device)
        elapsed = time.perf_counter() - start
        row.batch = batch
        row.images_per_s = steps * batch / elapsed
        model_flops = trainer.model.flops_per_image()
        teacher = trainer.model.flops_per_image(include_teacher=True) - model_flops
        flops = training_flops_per_image(model_flops, teacher if spec.source == "online" else 0)
        row.tflops = row.images_per_s * flops / 1e12
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        row.mfu = mfu(row.images_per_s, flops, peak_bf16_flops(name))
        if device.type == "cuda":
            row.peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
            row.syncs_per_step = _count_syncs(step, scale.sync_steps)
        row.host_reads = _count_host_reads(step, scale.sync_steps)
    finally:
        trainer.metrics.close()  # the trainer itself goes with this frame; `run_row` frees


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_row(
    spec: RowSpec, setup: Setup, deadline: float, measure_at: Callable[..., None] = measure
) -> Row:
    """The largest batch of the list that fits; each out-of-memory batch is recorded."""
    row = Row(spec.name)
    for batch in setup.scale.batches[spec.preset]:
        if time.monotonic() > deadline:
            row.status = "skipped"
            row.note = "time budget spent before a batch fitted"
            return row
        try:
            measure_at(spec, setup, batch, row)
            return row
        except torch.OutOfMemoryError:
            row.oom_batches.append(batch)
        finally:
            _free(setup.device)
    row.status = "oom"
    row.note = "no batch of the list fits"
    return row


def cache_read_row(setup: Setup, teacher: str) -> Row:
    """Feature-cache reads from disk in one process (the trainer's loader path, no GPU)."""
    from torch.utils.data import DataLoader

    from strop.model.feature_cache import FeatureCacheDataset
    from strop.training.data import collate

    row = Row(f"{CACHE_ROW} {teacher} ({setup.scale.image_size}px, 1 process)")
    dataset = FeatureCacheDataset(setup.caches[teacher], "train")
    loader = DataLoader(dataset, batch_size=64, num_workers=0, collate_fn=collate)
    start = time.perf_counter()
    n = nbytes = 0
    for batch in loader:
        n += batch["feats"].shape[0]
        nbytes += batch["feats"].numel() * 2
    elapsed = time.perf_counter() - start
    row.images_per_s = n / elapsed
    row.note = (
        f"{nbytes / elapsed / 2**20:,.0f} MiB/s; {n} items of {tuple(dataset.shape[1:])} fp16"
    )
    return row


# --------------------------------------------------------------------------- run


def run(
    dry_run: bool = False, only: str | None = None, budget_s: float = 420.0
) -> tuple[list[Row], dict[str, Any]]:
    """Measure every row (those whose name contains `only`); returns rows and machine facts."""
    scale = DRY if dry_run else FULL
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    backend = None if cuda else "eager"
    specs = [s for s in ROWS if only is None or only.lower() in s.name.lower()]
    machine = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "dry_run": dry_run,
        "image_size": scale.image_size,
    }
    start = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        setup = prepare(scale, device, Path(tmp), backend)
        machine["setup_s"] = round(time.monotonic() - start, 1)
        for i, spec in enumerate(specs):
            left = budget_s - (time.monotonic() - start)
            deadline = time.monotonic() + max(0.0, left / (len(specs) - i))
            if left <= 0:
                rows.append(Row(spec.name, status="skipped", note="time budget spent"))
                continue
            try:
                rows.append(run_row(spec, setup, deadline))
            except Exception as exc:  # a failed row is reported by name; the others still run
                text = str(exc).strip().splitlines()
                rows.append(
                    Row(
                        spec.name,
                        status="failed",
                        note=f"{type(exc).__name__}: {text[0] if text else ''}",
                    )
                )
                traceback.print_exc(file=sys.stderr)
        if only is None or "cache" in only.lower():
            for teacher in sorted(setup.caches):
                rows.append(cache_read_row(setup, teacher))
    machine["total_s"] = round(time.monotonic() - start, 1)
    return rows, machine


def _fmt(column: str, value: Any) -> str:
    if value is None or value == []:
        return "n/a" if column not in ("oom_batches",) else ""
    if column == "mfu":
        return f"{100 * value:.1f}%"
    if column == "oom_batches":
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def print_table(rows: list[Row], machine: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    console.print(f"[bold]bench gpu[/]: {machine}")
    table = Table(title="STROP training on one device")
    for column in (*COLUMNS, "note"):
        table.add_column(column, justify="left" if column in ("row", "status", "note") else "right")
    for row in rows:
        values = asdict(row)
        table.add_row(*(_fmt(c, values[c]) for c in (*COLUMNS, "note")))
    console.print(table)


class _Parser(argparse.ArgumentParser):
    """argparse with one `error: ...` line (exit 2) instead of a usage block and a second line."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def check_options(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, found before any row runs (a GPU is lent for
    minutes: a typo must not spend them), or None."""
    if not (args.budget_s > 0 and math.isfinite(args.budget_s)):
        return f"--budget-s {args.budget_s}: expected a positive number of seconds"
    if args.only is not None:
        names = [spec.name for spec in ROWS]
        if not args.only.strip() or (
            not any(args.only.lower() in n.lower() for n in names)
            and "cache" not in args.only.lower()
        ):
            return (
                f"--only {args.only!r} matches no row; rows: {', '.join(names)}, feature cache read"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    from bench.json_report import json_writable, write_json

    parser = _Parser(prog="python -m bench gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every row at toy size (CPU ok)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="time for all rows (default 420 s)"
    )
    args = parser.parse_args(argv)
    problem = check_options(args)
    if problem:
        print(f"error: bench gpu: {problem}", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: bench gpu: no CUDA device; use --dry-run to run every row at toy size",
            file=sys.stderr,
        )
        return 2
    if not json_writable(args.json, "bench gpu"):  # before the rows, not after minutes of them
        return 1
    rows, machine = run(args.dry_run, args.only, args.budget_s)
    print_table(rows, machine)
    if args.json:
        report = {"machine": machine, "rows": [asdict(r) for r in rows]}
        if not write_json(args.json, report, "bench gpu"):
            return 1
    errors = failures(rows, args.budget_s, machine.get("setup_s"))
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


def failures(rows: list[Row], budget_s: float = 420.0, setup_s: Any = None) -> list[str]:
    """One `error:` line per failed row, naming it (out of memory and skipped are results),
    or one line when the time budget ran out before any training row was measured: a call
    that measured nothing has failed (it exited 0 with `--budget-s 1e-300`)."""
    lines = [
        f"error: bench gpu: row '{r.row}' failed ({r.note})" for r in rows if r.status == "failed"
    ]
    steps = [r for r in rows if not r.row.startswith(CACHE_ROW)]
    if steps and all(r.status == "skipped" for r in steps):
        setup = f" (the setup alone took {setup_s} s)" if setup_s is not None else ""
        lines.append(
            f"error: bench gpu: --budget-s {budget_s:g} ran out before any row was measured"
            f"{setup}; give it more time"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
