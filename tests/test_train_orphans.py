"""A training killed with SIGKILL leaves nothing behind that blocks its resume (issue 18).

Real processes: `strop train` with forked DataLoader workers, killed with SIGKILL after a
checkpoint. Its workers used to survive as orphans holding the inherited `RUN/.lock` (an
`flock` belongs to the open file, which a fork shares), so the resume failed forever with
"in use by another training (pid N)" naming the dead trainer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import fault_cli_args as cli_args
from helpers import fault_config as config
from helpers import start_strop as start
from helpers import wait_for

from strop.runs.lock import RunLock, RunLockedError
from strop.training import checkpoint as ckpt
from strop.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its last ")".
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill9_with_loader_workers_resumes_at_once_and_leaves_no_process(clevr, tmp_path):
    out = tmp_path / "run"
    sets = ("train.num_workers=2", "train.checkpoint_every=2")
    proc = start(cli_args(clevr, out, 100_000, *sets))
    try:
        assert wait_for(proc, lambda: (out / "checkpoints" / "last.pt").is_file()), (
            proc.stdout.read() if proc.stdout else ""
        )
        workers = descendants(proc.pid)
        assert len(workers) >= 2, workers  # the DataLoader's forked workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed = time.monotonic()
        RunLock(out).acquire().release()  # free at once: it went with the trainer
        assert time.monotonic() - killed < 2
        done = ckpt.load_resumable(out).state["step"]
        # The resume starts at once: the lock went with the trainer, not with its workers.
        train(config(clevr, 100_000, "train.num_workers=0"), out, progress=False, stop_at=done + 1)
        assert ckpt.load_checkpoint(out / "checkpoints" / "last.pt")["step"] == done + 1
        deadline = killed + 2
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if alive(p)], "workers of the killed training survive"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in descendants(proc.pid) if proc.poll() is None else ():
            os.kill(pid, signal.SIGKILL)
        if proc.stdout:
            proc.stdout.close()


HOLD = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, sys.argv[2].encode() + b"\\n", 0)
    print("locked", flush=True)
    time.sleep(120)
    """
)


def dead_pid() -> int:
    """A pid no process has: a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_lock_whose_recorded_pid_is_dead_says_so_and_names_the_holder(tmp_path):
    """A lock held while the pid in `.lock` is dead (a process the trainer left behind, or
    one in another pid namespace): the message must not call a dead pid a running training."""
    out = tmp_path / "run"
    out.mkdir()
    gone = dead_pid()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out / ".lock"), str(gone)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as err:
            RunLock(out).acquire()
        message = str(err.value)
        assert f"pid {gone}" in message and "no longer running" in message, message
        assert f"pid {holder.pid}" in message, message  # who holds it now
        assert "\n" not in message
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    RunLock(out).acquire().release()  # the holder's lock went with it


def test_the_lock_excludes_a_second_holder_in_the_same_process(tmp_path):
    """A lock per process (POSIX record lock) does not exclude its own process: a second
    RunLock on the same folder in one process is refused too, and releasing one is safe."""
    first = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    finally:
        first.release()
    RunLock(tmp_path).acquire().release()
