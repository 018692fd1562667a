"""Run folders under faults (issue 14): kill -9 at any moment, torn log rows, full disks, two
trainings at once, manual rollbacks and damaged checkpoints. Real processes killed with
SIGKILL, real files, the tiny model on CPU.

The fault-injection test kills the trainer at random points (before its first checkpoint,
after one, with a torn log row left behind each time) and checks that the run it finally
completes has the metrics and weights of one uninterrupted run. The default suite kills it
twice; `-m slow` kills it at many more points.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import fill
from helpers import FAULT_SETS as SETS
from helpers import FAULT_STEPS as STEPS
from helpers import TIMING_KEYS, wait_for
from helpers import fault_cli_args as cli_args
from helpers import fault_config as config
from helpers import start_strop as start

from strop.runs import RunFolder, RunFolderError
from strop.runs.lock import RunLockedError
from strop.training import checkpoint as ckpt
from strop.training.config import ConfigError, make_run_config
from strop.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

TORN = '{"step": 3, "phase": 1, "align_loss": 0.4'  # a row cut short by a kill or a full disk


@pytest.fixture(scope="module")
def straight(clevr, tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    return train(config(clevr), tmp_path_factory.mktemp("straight") / "run", progress=False)


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    try:  # a resume without a checkpoint moves the file aside: it can vanish between polls
        text = path.read_text()
    except FileNotFoundError:
        return []
    steps = []
    for line in text.splitlines():
        if line.endswith("}") and '"loss"' in line:
            steps.append(int(line.split('"step": ')[1].split(",")[0]))
    return steps


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    assert strip(RunFolder(a).read_metrics()) == strip(RunFolder(b).read_metrics())
    sa = ckpt.load_checkpoint(a / "checkpoints" / "last.pt")
    sb = ckpt.load_checkpoint(b / "checkpoints" / "last.pt")
    assert sa["step"] == sb["step"] == STEPS
    for key, value in sa["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, sb["model"][key]), key
        else:
            assert value == sb["model"][key], key
    assert torch.equal(sa["curriculum"]["bank"]["targets"], sb["curriculum"]["bank"]["targets"])


def kill_at(clevr: Path, out: Path, rng: random.Random, before_first_checkpoint: bool) -> str:
    """Start the trainer and SIGKILL it at a random point; leave a torn row behind."""
    if before_first_checkpoint:
        # No checkpoint before the end of the run: the kill lands before the first one.
        proc = start(cli_args(clevr, out, STEPS, "train.checkpoint_every=1000"))
        rows = rng.randint(1, 6)

        def ready() -> bool:
            return len(logged_steps(out)) >= rows
    else:
        # A random step between the checkpoint it resumes from and the end of the run. Rows
        # past that checkpoint, left by the last kill, count only after the new process has
        # cut them away (resume), so the kill lands on rows this process wrote.
        done = max((s for s, _ in ckpt.list_steps(out)), default=0)
        stale = len(logged_steps(out))
        target = rng.randint(done + 1, STEPS - 1)
        cut = [stale <= done]
        proc = start(cli_args(clevr, out))

        def ready() -> bool:
            rows = len(logged_steps(out))
            cut[0] = cut[0] or rows < stale
            return cut[0] and rows >= target

    reached = wait_for(proc, ready)
    proc.send_signal(signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGKILL, 0), output  # 0: it finished first (rare)
    if before_first_checkpoint:
        assert reached and not ckpt.has_checkpoint(out), output
    with open(out / "metrics.jsonl", "a") as handle:  # the kill cut a row short
        handle.write(TORN[: rng.randint(5, len(TORN))])
    where = f"{len(logged_steps(out))} rows, checkpoints {[s for s, _ in ckpt.list_steps(out)]}"
    return f"killed ({'before any checkpoint' if before_first_checkpoint else 'at a random step'}) at {where}"


def test_kill9_before_first_checkpoint_and_after_torn_writes_equals_a_straight_run(
    clevr, straight, tmp_path
):
    seed = random.randrange(1 << 30)
    rng, out = random.Random(seed), tmp_path / "run"
    history = [kill_at(clevr, out, rng, before_first_checkpoint=True)]
    history.append(kill_at(clevr, out, rng, before_first_checkpoint=False))
    train(config(clevr), out, progress=False)
    print(seed, history)
    assert_same_run(straight, out)
    assert (out / "metrics.jsonl.old").is_file()  # the first attempt's rows, kept aside


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill9_at_many_random_points_equals_a_straight_run(clevr, straight, tmp_path, seed):
    rng, out = random.Random(seed), tmp_path / "run"
    history = []
    for i in range(6):
        first = i == 0 or (not ckpt.has_checkpoint(out) and rng.random() < 0.5)
        history.append(kill_at(clevr, out, rng, before_first_checkpoint=first))
        if max((s for s, _ in ckpt.list_steps(out)), default=0) >= STEPS - 2:
            break  # too close to the end for another kill
    done = start(cli_args(clevr, out))
    output, _ = done.communicate(timeout=300)
    assert done.returncode == 0, (output, history)
    assert_same_run(straight, out)


# --------------------------------------------------------------------------- metrics.jsonl


def test_a_torn_last_row_is_dropped_on_resume(clevr, straight, tmp_path):
    """Disk full while logging left a torn row; the resumed run used to append to it (and
    every later resume failed on the torn line)."""
    out = tmp_path / "run"
    train(config(clevr), out, progress=False, stop_at=6)
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 7, "phase": 3, "align_loss": 0.3')
    train(config(clevr), out, progress=False)
    assert_same_run(straight, out)


def test_rows_of_a_run_killed_before_its_first_checkpoint_are_not_repeated(
    clevr, straight, tmp_path
):
    """What a kill before the first checkpoint leaves (config and rows, no checkpoint): the
    rerun starts the log afresh instead of appending a second copy of the same steps."""
    out = tmp_path / "run"
    train(config(clevr), out, progress=False, stop_at=4)
    shutil.rmtree(out / "checkpoints")
    old = (out / "metrics.jsonl").read_text()
    train(config(clevr), out, progress=False)
    assert_same_run(straight, out)
    assert (out / "metrics.jsonl.old").read_text() == old


def test_disk_full_while_logging_is_one_line_and_the_run_resumes(
    clevr, straight, tmp_path, full_disk
):
    out = tmp_path / "run"
    train(config(clevr), out, progress=False, stop_at=3)
    metrics = out / "metrics.jsonl"
    kept = metrics.read_text()
    metrics.unlink()
    # the log on a real full disk (a link to a device such as /dev/full is refused as an
    # output that is not a regular file), empty: the slack of a file's last page would take
    # a few rows more
    (full_disk / "metrics.jsonl").touch()
    metrics.symlink_to(full_disk / "metrics.jsonl")
    fill(full_disk)
    with pytest.raises(RunFolderError) as err:
        train(config(clevr), out, progress=False)
    assert str(err.value) == f"{metrics}: cannot append a row (the disk is full: 0 bytes free)"
    metrics.unlink()
    metrics.write_text(kept)
    train(config(clevr), out, progress=False)
    assert_same_run(straight, out)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_names_are_separate_files_and_a_manual_rollback_is_honoured(
    clevr, tmp_path, capfd
):
    out = tmp_path / "run"
    train(config(clevr, 9), out, progress=False)
    folder = out / "checkpoints"
    files = sorted(folder.glob("*.pt"))
    assert [p.name for p in files] == ["last.pt", *(ckpt.step_name(s) for s in (3, 6, 9))]
    assert all(p.stat().st_nlink == 1 for p in files)  # no two names share one inode
    assert len({p.stat().st_ino for p in files}) == len(files)
    shutil.copyfile(folder / "step-0000003.pt", folder / "last.pt")  # `cp`: a rollback
    assert ckpt.load_checkpoint(folder / "step-0000009.pt")["step"] == 9  # untouched
    capfd.readouterr()
    train(config(clevr, 9), out, progress=False)  # resumes at 3, trains 4..9 again
    note = capfd.readouterr().err
    assert f"resuming from {folder / 'last.pt'} (step 3)" in note
    assert "not resuming from the newer step-0000006.pt, step-0000009.pt" in note
    assert ckpt.load_checkpoint(folder / "last.pt")["step"] == 9
    assert [r["step"] for r in RunFolder(out).read_metrics() if "loss" in r] == list(range(1, 10))


def test_a_damaged_last_pt_is_skipped_on_resume_and_named_by_export(
    clevr, straight, tmp_path, capfd
):
    out = tmp_path / "run"
    train(config(clevr), out, progress=False, stop_at=9)
    last = out / "checkpoints" / "last.pt"
    data = last.read_bytes()
    with open(last, "r+b") as handle:  # damage in place, as a bad disk or a bad copy would
        handle.truncate(len(data) // 3)
    assert ckpt.load_checkpoint(out / "checkpoints" / "step-0000009.pt")["step"] == 9

    from typer.testing import CliRunner

    from strop.cli import app

    result = CliRunner().invoke(app, ["export", str(out)])
    assert result.exit_code != 0
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line and "weights_only" not in line
    assert str(last) in line and "damaged or truncated" in line
    assert "loadable: step-0000009, step-0000006, step-0000003" in line

    capfd.readouterr()
    train(config(clevr), out, progress=False)
    err = capfd.readouterr().err
    assert "resuming from" in err and "step-0000009.pt (step 9)" in err
    assert "skipped last.pt: not a loadable STROP checkpoint (damaged or truncated file)" in err
    assert_same_run(straight, out)


def test_a_refused_pickle_never_suggests_weights_only_false(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for name, write in (
        ("evil.pt", lambda p: torch.save({"step": 1, "model": Evil()}, p)),
        ("junk.pt", lambda p: p.write_bytes(b"not a checkpoint")),
        ("zeros.pt", lambda p: p.write_bytes(bytes(1000))),
    ):
        write(tmp_path / name)
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.load_checkpoint(tmp_path / name)
        assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
        assert str(tmp_path / name) in str(err.value)
    with pytest.raises(ckpt.CheckpointError, match=r"refused: it holds Python code \(posix"):
        ckpt.load_checkpoint(tmp_path / "evil.pt")


def test_disk_full_while_writing_a_checkpoint_is_one_line(clevr, tmp_path):
    """A file-size limit makes every write past 64 KiB fail (EFBIG), as a full disk does
    (ENOSPC): the checkpoint write fails, the metrics rows (small) do not."""
    out = tmp_path / "run"

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = start(cli_args(clevr, out, 4), preexec_fn=small_files)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert (
        f"{out / 'checkpoints'}: cannot write the checkpoint of step 3 (File too large)"
        in (lines[0])
    )
    assert not list((out / "checkpoints").glob(".*.tmp"))  # nothing half-written left
    # The first checkpoint failed: there is no previous one to call intact (issue 18).
    assert "no checkpoint was written yet" in lines[0] and "is intact" not in lines[0]


# --------------------------------------------------------------------------- one writer


def test_a_second_training_into_a_locked_run_fails_at_once_naming_the_pid(clevr, tmp_path):
    out = tmp_path / "run"
    holder = start(cli_args(clevr, out, 100_000, "train.checkpoint_every=100000"))
    try:
        assert wait_for(holder, lambda: len(logged_steps(out)) >= 1), holder.stdout.read()
        started = time.perf_counter()
        with pytest.raises(RunLockedError) as err:
            train(config(clevr, 2), out, progress=False)
        assert time.perf_counter() - started < 5
        assert str(err.value).startswith(f"{out}: in use by another training (pid {holder.pid})")
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    # The killed holder's lock went with it: the next training takes the folder.
    train(config(clevr, 2), out, progress=False)
    assert ckpt.load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2


# --------------------------------------------------------------------------- flags


def test_bad_steps_and_batch_size_fail_before_anything_is_written(clevr, tmp_path):
    from typer.testing import CliRunner

    from strop.cli import app

    for flag, value in (("--steps", "0"), ("--steps", "-5"), ("--batch-size", "0")):
        out = tmp_path / f"run{flag}{value}"
        args = cli_args(clevr, out, 4)
        args += [flag, value]
        result = CliRunner().invoke(app, args)
        assert result.exit_code != 0, result.output
        line = result.output.strip()
        assert line.startswith(f"error: {flag} {value}: must be at least 1"), line
        assert "validation error" not in line and "trained" not in line
        assert not out.exists()


def test_steps_with_set_blames_the_flags_that_set_the_values():
    # The final values are valid: the order of --set must not matter.
    cfg = make_run_config(
        "d", "tiny", "pixels", steps=10, overrides=["train.warmup_steps=5", "train.hold_steps=8"]
    )
    assert (cfg.train.warmup_steps, cfg.train.hold_steps) == (5, 8)
    with pytest.raises(ConfigError) as err:
        make_run_config("d", "tiny", "pixels", steps=100, overrides=["train.warmup_steps=50"])
    message = str(err.value)
    assert "hold_steps (20) must be >= warmup_steps (50)" in message
    assert "train.hold_steps from --steps 100" in message
    assert "train.warmup_steps from --set train.warmup_steps=50" in message


def test_steps_extends_a_finished_run(clevr, tmp_path):
    """`--steps 200` on a finished run was refused with advice to start a new run, while
    `--set train.steps=200` worked: --steps now moves the end and keeps the schedule."""
    from typer.testing import CliRunner

    from strop.cli import app

    out = tmp_path / "run"
    schedule = ("curriculum.phase_steps", "train.warmup_steps", "train.hold_steps")
    args = ["train", "--data", str(clevr), "--preset", "tiny", "--teacher", "pixels"]
    args += ["--k", "16", "--out", str(out), "--batch-size", "4", "--no-progress"]
    for item in SETS:
        if not item.startswith(schedule):  # --steps sets the schedule
            args += ["--set", item]
    first = CliRunner().invoke(app, [*args, "--steps", "4"])
    assert first.exit_code == 0, first.output
    stored = RunFolder(out).read_config()
    more = CliRunner().invoke(app, [*args, "--steps", "6"])
    assert more.exit_code == 0, more.output
    assert ckpt.load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6
    now = RunFolder(out).read_config()
    assert now["train"]["steps"] == 6
    for section, key in (("train", "warmup_steps"), ("train", "hold_steps")):
        assert now[section][key] == stored[section][key]
    assert now["curriculum"]["phase_steps"] == stored["curriculum"]["phase_steps"]


# --------------------------------------------------------------------------- data workers


def test_a_corrupt_image_in_a_loader_worker_names_the_file(clevr, tmp_path):
    data = Path(shutil.copytree(clevr, tmp_path / "data"))
    victim = data / "images" / "train" / "CLEVR_train_000003.png"
    victim.write_bytes(victim.read_bytes()[:100])
    proc = start(cli_args(data, tmp_path / "run", 20, "train.num_workers=1"))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert str(victim) in lines[0] and "field image: cannot decode image" in lines[0]
