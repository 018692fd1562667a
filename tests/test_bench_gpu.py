"""`python -m bench gpu --dry-run`: every GPU row on the same code at toy size, on CPU; bad
command lines refused in one line before any row runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import chattr

from bench import bench_gpu

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_runs_every_row_and_prints_every_column(tmp_path):
    out = tmp_path / "gpu.json"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "gpu", "--dry-run", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        timeout=300,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert {spec.name for spec in bench_gpu.ROWS} <= set(rows)
    assert any(name.startswith("feature cache read") for name in rows)
    for spec in bench_gpu.ROWS:
        row = rows[spec.name]
        assert row["status"] == "ok" and row["batch"] == 4, row
        assert row["images_per_s"] > 0 and row["tflops"] > 0
        assert row["mfu"] is None  # no peak on CPU: MFU is n/a, never a made-up figure
        assert row["host_reads"] is not None  # counted on CPU too (strop.testing.host_reads)
    for column in (*bench_gpu.COLUMNS, "note"):
        assert column in done.stdout
    assert "n/a" in done.stdout
    # "under a minute": the run's own clock (imports and setup included) on the CI machine
    assert report["machine"]["total_s"] < 60, report["machine"]
    print(f"bench gpu --dry-run: {elapsed:.1f} s wall, {report['machine']['total_s']} s measured")


def test_out_of_memory_is_a_recorded_result_not_a_crash():
    """A device that cannot hold the larger batches: the row records them and uses the
    largest that fits; when none fits the row says so. (No CPU run can run out of device
    memory, so the device here is a function that raises torch's own error.)"""
    setup = bench_gpu.Setup(
        bench_gpu.Scale(32, {"S": (8, 4, 2), "M": (8, 4)}),
        torch.device("cpu"),
        Path(),
        Path(),
        {},
        {},
        None,
    )

    def small_device(spec, setup, batch, row):
        if batch > 2:
            raise torch.OutOfMemoryError(f"cannot hold batch {batch}")
        row.batch, row.images_per_s = batch, 1.0

    spec_s, spec_m = (
        bench_gpu.RowSpec("S", "cached", False),
        bench_gpu.RowSpec("M", "cached", False),
    )
    far = time.monotonic() + 60
    row = bench_gpu.run_row(spec_s, setup, far, small_device)
    assert (row.status, row.batch, row.oom_batches) == ("ok", 2, [8, 4])
    row = bench_gpu.run_row(spec_m, setup, far, small_device)
    assert (row.status, row.batch, row.oom_batches) == ("oom", None, [8, 4])
    assert bench_gpu.failures([row]) == []
    failed = bench_gpu.Row("STROP-M online eager split", status="failed", note="RuntimeError: x")
    assert bench_gpu.failures([row, failed]) == [
        "error: bench gpu: row 'STROP-M online eager split' failed (RuntimeError: x)"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_cuda_the_full_run_refuses_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "gpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: bench gpu: no CUDA device; use --dry-run to run every row at toy size"
    )


# --------------------------------------------------------------------------- bad command lines


def _bench_gpu(capsys, *argv: str) -> tuple[int, str]:
    """`python -m bench gpu ARGV` in process: (exit status, stderr). Every case here must
    stop before the first row runs, so each takes milliseconds."""
    from bench import bench_gpu

    start = time.monotonic()
    try:
        code = bench_gpu.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert time.monotonic() - start < 5, "a bad command line ran rows before it was refused"
    return code, err


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["--dry-run", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["--dry-run", "--json"], 2, "argument --json: expected one argument"),
        (["--dry-run", "--budget-s", "abc"], 2, "invalid float value: 'abc'"),
        (["--dry-run", "--budget-s", "-1"], 2, "--budget-s -1.0: expected a positive number"),
        (["--dry-run", "--budget-s", "nan"], 2, "--budget-s nan: expected a positive number"),
        (["--dry-run", "--only", "STROP-XL"], 2, "--only 'STROP-XL' matches no row; rows: STROP-S"),
        (["--dry-run", "--only", ""], 2, "--only '' matches no row"),
    ],
)
def test_bench_gpu_bad_command_lines_are_one_line_before_any_row(capsys, argv, code, says):
    """argparse printed a usage block and a second line; --only with a typo and a budget of
    -1 or nan ran nothing and exited 0 (a lent GPU's minutes spent on a typo)."""
    got, err = _bench_gpu(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code and len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0]


@pytest.mark.parametrize("where", ["a folder", "under a file", "immutable"])
def test_bench_gpu_json_that_cannot_be_written_fails_before_the_rows(capsys, tmp_path, where):
    """It used to fail with a traceback after every row had run."""
    target = {"a folder": tmp_path, "under a file": tmp_path / "f" / "gpu.json"}.get(where)
    if where == "under a file":
        (tmp_path / "f").write_text("x")
    if where == "immutable":
        (tmp_path / "ro").mkdir()
        chattr("+i", tmp_path / "ro")
        target = tmp_path / "ro" / "gpu.json"
    try:
        code, err = _bench_gpu(capsys, "--dry-run", "--json", str(target))
    finally:
        if where == "immutable":
            chattr("-i", tmp_path / "ro")
    assert code == 1 and err.startswith(f"error: bench gpu: --json {target}"), err
    assert len(err.strip().splitlines()) == 1
