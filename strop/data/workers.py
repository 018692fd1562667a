"""DataLoader workers that die with the process that started them.

A DataLoader forks its workers. When that process is killed with SIGKILL it cannot stop
them, and a worker could outlive it for good (asleep in a futex, parent pid 1), holding
whatever it inherited: memory, the GPU context, descriptors of the run folder.

Design decisions
- `worker_init_fn=parent_watch()` makes each worker die with its parent two ways: on Linux
  the kernel sends it SIGKILL when the parent goes (`prctl(PR_SET_PDEATHSIG)`, through
  ctypes: no dependency), and on every platform a daemon thread compares `getppid()` with
  the pid that built the loader twice a second and exits at once (`os._exit`: the clean exit
  path is where an orphan hung). The thread also covers the race of a parent that died
  before `prctl` ran.
- PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends; every loader here
  is iterated by its process's main thread, so that is the process ending.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5


def parent_watch() -> Callable[[int], None]:
    """A `worker_init_fn` that ties each worker's life to this process (module docstring)."""
    return functools.partial(die_with_parent, os.getpid())


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """Run in a worker: die when process `parent` does."""
    if sys.platform == "linux":
        _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent went before the signal was armed
        os._exit(1)
    watcher = threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True)
    watcher.start()


def _set_parent_death_signal(sig: int) -> None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watcher thread still ends the worker


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)
