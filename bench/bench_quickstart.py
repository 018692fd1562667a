"""The quickstart's runs side by side: wall time of a reduced `strop quickstart` at `--jobs 1`
against `--jobs N` (N = the usable cores, at most the number of runs).

`run(quick=False) -> list[dict]` rows `name`, `value`, `unit`, `baseline`, `ratio`
(ratio = baseline / value: the speed-up of N workers over one, higher is better).

What is measured: the real console script, start to end, as a user runs it (`strop quickstart
--out TMP ...`, output discarded), each time into a fresh folder: render, train the four runs
(three K and the fixed-length baseline, as the default does), export, evaluate, analyse, mine
grammars, decode, report. Only the runs (stages 2-4) go side by side; the rest is the same
work at either `--jobs`, so the ratio is the speed-up of the whole command, not of training
alone. Both runs of the command use one torch thread per process, so N workers need N idle
cores to give N times: on a shared machine the ratio falls with the other load.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KS = "32,64,128"
FIXED_K = "64"


def _cores() -> int:
    from strop.quickstart.config import usable_cores

    return usable_cores()


def _seconds(out: Path, jobs: int, steps: int, n_images: int) -> float:
    exe = Path(sys.executable).with_name("strop")
    cmd = [str(exe), "quickstart", "--out", str(out), "--n-images", str(n_images),
           "--steps", str(steps), "--ks", KS, "--fixed-k", FIXED_K, "--jobs", str(jobs)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no stderr"]
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {done.returncode}: {tail[0]}")
    return seconds


def run(quick: bool = False) -> list[dict[str, Any]]:
    # 160 images: the decoders need 15 held-out scenes with 50 shots from train.
    steps, n_images = (24, 160) if quick else (60, 200)
    jobs = max(1, min(_cores(), len(KS.split(",")) + 1))
    where = f"{n_images} images, {steps} steps, K {KS} + fixed {FIXED_K}"
    with tempfile.TemporaryDirectory() as tmp:
        one = _seconds(Path(tmp) / "jobs1", 1, steps, n_images)
        rows = [_row(f"reduced quickstart, --jobs 1 ({where})", one, None)]
        if jobs > 1:
            many = _seconds(Path(tmp) / f"jobs{jobs}", jobs, steps, n_images)
            rows.append(_row(f"reduced quickstart, --jobs {jobs} ({where})", many, one))
    return rows


def _row(name: str, value: float, baseline: float | None) -> dict[str, Any]:
    ratio = baseline / value if baseline else None
    return {"name": name, "value": value, "unit": "s", "baseline": baseline, "ratio": ratio}


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
