"""Special files where an image should be (issue 18): a named pipe made `strop data inspect
--check-all` (and a training loader) block forever on open. Real `mkfifo`; every command
runs in a subprocess with a timeout, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT = 120


def strop(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "strop.cli", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"strop {' '.join(args)} hung on a named pipe")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_named_pipe_named_by_a_scene_fails_inspect_naming_it(synth_clevr: Path) -> None:
    victim = sorted((synth_clevr / "images" / "train").glob("*.png"))[2]
    victim.unlink()
    os.mkfifo(victim)
    for args in ([], ["--check-all"]):
        line = one_error_line(strop("data", "inspect", str(synth_clevr), *args))
        assert str(victim) in line and "not a regular file (a named pipe)" in line, line


def test_a_named_pipe_in_an_image_folder_fails_naming_it(tmp_path: Path, synth_clevr: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for png in sorted((synth_clevr / "images" / "val").glob("*.png")):
        (folder / png.name).write_bytes(png.read_bytes())
    os.mkfifo(folder / "zz_pipe.png")
    line = one_error_line(strop("data", "inspect", str(folder), "--check-all"))
    assert str(folder / "zz_pipe.png") in line and "a named pipe" in line, line


def test_load_image_refuses_a_named_pipe_without_blocking(tmp_path: Path) -> None:
    """The loader's own open (what a training worker calls), for a pipe that appears after
    the dataset was listed: it must not block waiting for a writer."""
    pipe = tmp_path / "late.png"
    os.mkfifo(pipe)
    code = (
        "import sys\n"
        "from strop.data.datasets import DataError, load_image\n"
        "try:\n"
        f"    load_image({str(pipe)!r}, 8, where='late.png: index 0')\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail("load_image blocked on a named pipe")
    assert result.stdout.strip() == (
        "late.png: index 0 field image: not a regular file (a named pipe)"
    ), result.stderr
