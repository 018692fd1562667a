"""Plain helpers that several test modules share (fixtures live in conftest.py): the tiny
training settings and their command lines, the in-process CLIs, kill -9 mid-shard and the
check that resumes leave finished files alone, random LPIPS weights in the real files'
layouts, and `chattr`. Test modules import from here, never from each other
(`test_foundation_standalone.py` checks it).

Nothing here imports torch or the model at module level: the grammar and llm_decode tests
check that their packages never import torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch
    from click.testing import Result

    from strop.training.config import RunConfig

# --------------------------------------------------------------------------- tiny trainings

#: Timing columns of metrics.jsonl: they differ between two otherwise identical runs.
TIMING_KEYS = {"images_per_s", "model_tflops"}


def tiny_sets(
    phase_steps: str = "3,6,9,12",
    log_every: int = 2,
    checkpoint_every: int = 4,
    lr: str | None = "1e-3",
) -> list[str]:
    """The tiny run at 32 px with its four phases ending at `phase_steps`, validated at step 8,
    as `--set` items (`lr=None` keeps the preset's learning rate)."""
    sets = [
        "model.image_size=32",
        "model.l_max=8",
        "model.decoder_width=16",
        f"curriculum.phase_steps={phase_steps}",
        "curriculum.probe_radius=1",
        "train.num_workers=0",
        f"train.log_every={log_every}",
        "train.val_every=8",
        "train.val_batches=1",
        f"train.checkpoint_every={checkpoint_every}",
        "train.warmup_steps=2",
        "train.hold_steps=4",
    ]
    return sets if lr is None else [*sets, f"train.lr={lr}"]


#: The tiny run at 32 px with its phases compressed into 12 steps (the trainer's tests).
BASE_SETS = tiny_sets()


def trainer_config(data: Path, steps: int = 16, *sets: str) -> RunConfig:
    """The tiny run at 32 px with phases compressed into `steps` (BASE_SETS), then `sets`."""
    from conftest import tiny_run_config

    return tiny_run_config(data, f"train.steps={steps}", *BASE_SETS, *sets)


def tiny_cli_args(data: Path, out: Path, sets: list[str]) -> list[str]:
    """`strop train ...` arguments for `tiny_run_config(data, *sets)` into `out`."""
    args = ["train", "--data", str(data), "--preset", "tiny", "--teacher", "pixels", "--k", "16"]
    args += ["--out", str(out), "--batch-size", "4", "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return args


def trainer_cli_args(data: Path, out: Path, steps: int, *sets: str) -> list[str]:
    """`strop train ...` arguments for `trainer_config(data, steps, *sets)` into `out`."""
    return tiny_cli_args(data, out, [f"train.steps={steps}", *BASE_SETS, *sets])


#: The fault tests' tiny run: a log row and a checkpoint every few steps, so a kill at any
#: moment lands between or inside them.
FAULT_SETS = tiny_sets(log_every=1, checkpoint_every=3)
FAULT_STEPS = 16


def fault_config(data: Path, steps: int = FAULT_STEPS, *sets: str) -> RunConfig:
    """The fault tests' tiny run (FAULT_SETS) of `steps` steps, then `sets`."""
    from conftest import tiny_run_config

    return tiny_run_config(data, *FAULT_SETS, f"train.steps={steps}", *sets)


def fault_cli_args(data: Path, out: Path, steps: int = FAULT_STEPS, *sets: str) -> list[str]:
    """`strop train ...` arguments for `fault_config(data, steps, *sets)` into `out`."""
    return tiny_cli_args(data, out, [*FAULT_SETS, f"train.steps={steps}", *sets])


def start_strop(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    """`python -m strop.cli ARGS` as a real process (stdout and stderr together, one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "strop.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def wait_for(proc: subprocess.Popen[str], ready: Any, timeout: float = 180) -> bool:
    """Poll until `ready()`; False when the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.003)
    raise AssertionError("timed out waiting for the trainer")


# --------------------------------------------------------------------------- kill -9

#: `python -c SLOW_EXPORT RUN OUT [DATA]`: the real exporter of RUN's train,val into OUT in
#: shards of 4 rows, each batch of 3 slowed by 0.25 s so that a kill lands mid-export.
SLOW_EXPORT = """
import sys, time
import strop.evaluation.export as export
real = export.encode_batch
def slow(*args, **kwargs):
    time.sleep(0.25)
    return real(*args, **kwargs)
export.encode_batch = slow
export.export_programs(sys.argv[1], split="train,val", batch_size=3, progress=False,
                       out=sys.argv[2], shard_rows=4, data=(sys.argv[3:] or [None])[0])
"""


def kill_9_in_the_next_shard(
    script: str, args: list[str], shard: Path, env: dict[str, str] | None = None
) -> None:
    """`python -c SCRIPT ARGS` killed with SIGKILL 0.3 s after it finished `shard`: inside the
    next shard's first batch, when the script's batches take 0.25 s or more."""
    env = env or {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script, *args], env=env)
    try:
        deadline = time.monotonic() + 120
        while not shard.is_file():
            assert child.poll() is None and time.monotonic() < deadline, f"ended before {shard}"
            time.sleep(0.02)
        time.sleep(0.3)  # into the next shard's first batch
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()


def file_stamps(folder: Path, pattern: str) -> dict[str, tuple[int, int]]:
    """Inode and modification time of each `pattern` file in `folder` by name: a rewrite in
    place changes the time, a write-and-rename the inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob(pattern)}


def assert_not_rewritten(folder: Path, stamps: dict[str, tuple[int, int]]) -> None:
    """Each file of `stamps` (from `file_stamps`) is still in `folder`, never rewritten."""
    for name, stamp in stamps.items():
        path = folder / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp, name


# --------------------------------------------------------------------------- command lines


def strop(*args: object) -> Result:
    """`strop ARGS` in this process (the real app and its exit codes, no fresh interpreter)."""
    from typer.testing import CliRunner

    from strop.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def strop_grammar(*args: object) -> Result:
    """`strop-grammar ARGS` in this process."""
    from typer.testing import CliRunner

    from grammar.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def usage_error(result: Result) -> str:
    """Exit 2 from typer's own parameter checks (a boxed message) or from ours (`error:`);
    the output with its whitespace collapsed."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def chattr(flag: str, path: Path) -> None:
    """`chattr +i` (immutable: stops root too) or skip where the file system has no such flag."""
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("chattr is not installed")
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} is not supported here: {done.stderr.decode().strip()}")


# --------------------------------------------------------------------------- LPIPS weights

# torchvision/models/alexnet.py, `AlexNet.features` (conv layers at indices 0, 3, 6, 8, 10).
TORCHVISION_FEATURES = {
    "features.0.weight": (64, 3, 11, 11),
    "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5),
    "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3),
    "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3),
    "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3),
    "features.10.bias": (256,),
}
# lpips 0.1.4 wheel, lpips/weights/v0.1/alex.pth (sha256 df73285e35b2...), all weights >= 0.
LPIPS_LIN = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}


def random_backbone(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-layout AlexNet checkpoint with random features and a token classifier."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in TORCHVISION_FEATURES.items()}
    state["classifier.6.weight"] = torch.randn(10, 4, generator=g)  # dropped when loading
    return state


def random_lin(seed: int = 1) -> dict[str, torch.Tensor]:
    """lpips' linear heads in the wheel's layout, random non-negative weights."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(shape, generator=g) * 0.1 for k, shape in LPIPS_LIN.items()}


# --------------------------------------------------------------------------- programs rows

#: images per split (train and val) of conftest's `spread_dataset`
SPREAD_N = 10


def rows(p: Any) -> list[tuple]:
    """A `Programs`' rows as plain tuples (image id, split, codes, n_objects, scene)."""
    return [
        (i, s, c.tolist(), int(n), sc)
        for i, s, c, n, sc in zip(p.image_id, p.split, p.codes, p.n_objects, p.scene, strict=True)
    ]
