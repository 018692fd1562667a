"""Wall time and peak resident memory of one command run as a child process.

The peak is the kernel's own account (`wait4`'s `ru_maxrss`, Linux: KiB): the high-water mark
of the child, or of the largest process it waited for (torchrun's ranks), whichever is larger.
It is per child, unlike `getrusage(RUSAGE_CHILDREN)`, which keeps the maximum over every child
this process ever had and so cannot tell a second measurement from the first. Checked on Linux
(kernel `wait_task_zombie` fills the usage with `RUSAGE_BOTH`); elsewhere `ru_maxrss` may be
in bytes (macOS), which `peak_rss_bytes` does not correct.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message ends with its stderr tail."""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_bytes: int
    #: user + system CPU seconds of the child and the children it waited for: on a shared
    #: machine the wall time carries the other load, this much less so
    cpu_seconds: float = 0.0

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_bytes / 2**20


def measure(
    command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Measured:
    """Run `command` to completion; its wall seconds and peak RSS. Raises `CommandFailed`."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if child.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            raise CommandFailed(f"{' '.join(command[:6])} ... exited {child.returncode}: {tail}")
    return Measured(seconds, int(usage.ru_maxrss) * 1024, usage.ru_utime + usage.ru_stime)


def env_int(name: str) -> int:
    """A positive integer from the environment, 0 when unset."""
    text = os.environ.get(name, "")
    if text and not (text.isdigit() and int(text) > 0):
        raise ValueError(f"environment {name}={text!r}: expected a positive integer")
    return int(text or 0)
