"""Run every benchmark: `python -m bench [--only NAME ...] [--quick] [--json PATH]`.

`python -m bench gpu [--dry-run] [--json PATH]` is the one-call GPU measurement
(`bench/bench_gpu.py`, its own options); it is not one of the areas run by default.
`--only export mine` runs the dataset-scale areas (`OPT_IN`: minutes each, a 100M-code corpus on
disk), which a plain `python -m bench` leaves out.

Each `bench/bench_<area>.py` exposes `run(quick: bool = False) -> list[dict]`, rows of
`name`, `value`, `unit`, and, where one exists, `baseline` (the comparison measured in the same
run) and `ratio` (value / baseline, or baseline / value for times: each module says which).
This runner only collects and prints; it measures nothing itself. `--json` is checked
before the first benchmark (an existing folder, a regular file or none: a FIFO would block
the write forever) and written atomically.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import sys
import time
import traceback
from pathlib import Path

from bench.json_report import json_writable, write_json

AREAS = ("render", "model", "train", "input", "grammar", "decode", "length", "quickstart")
#: areas run only when named in --only (issue 28: export at scale, mining 100M codes)
OPT_IN = ("export", "mine")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _machine() -> dict[str, object]:
    info: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import os

        info["cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu"]:
        from bench import bench_gpu

        return bench_gpu.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=AREAS + OPT_IN, help="run only these areas")
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke run)")
    parser.add_argument("--json", type=Path, help="also write all rows to this JSON file")
    args = parser.parse_args(argv)
    if not json_writable(args.json, "bench"):  # before the benchmarks, not after minutes of them
        return 1

    from rich.console import Console
    from rich.table import Table

    console = Console()
    machine = _machine()
    console.print(f"[bold]machine[/]: {machine}")
    rows: list[dict[str, object]] = []
    failed = 0
    for area in args.only or AREAS:
        module = importlib.import_module(f"bench.bench_{area}")
        run = module.run
        kwargs = {"quick": args.quick} if "quick" in inspect.signature(run).parameters else {}
        console.print(f"[cyan]running bench_{area}...[/]")
        start = time.perf_counter()
        try:
            area_rows = run(**kwargs)
        except Exception:  # one broken benchmark must not hide the others
            failed += 1
            console.print(f"[red]bench_{area} failed[/]\n{traceback.format_exc()}")
            continue
        for row in area_rows:
            rows.append({"area": area, **row})
        console.print(f"  done in {time.perf_counter() - start:.1f} s")

    table = Table(title="STROP benchmarks")
    for column in ("area", "name", "value", "unit", "baseline", "ratio"):
        table.add_column(
            column, justify="right" if column in ("value", "baseline", "ratio") else "left"
        )
    for row in rows:
        table.add_row(
            *(_fmt(row.get(c)) for c in ("area", "name", "value", "unit", "baseline", "ratio"))
        )
    console.print(table)
    if args.json and not write_json(args.json, {"machine": machine, "rows": rows}, "bench"):
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
