"""`RunLock`: one writer per run folder (`RUN/.lock`, a POSIX record lock holding the pid)."""

from __future__ import annotations

import os
from pathlib import Path

from strop.runs.files import RunFolderError

LOCK_FILE = ".lock"


class RunLockedError(RunFolderError):
    """Another process holds the run folder's lock; the message names its pid."""


class RunLock:
    """An exclusive lock on a run folder (`RUN/.lock`, holding the pid), for one writer.

    `acquire` fails at once with `RunLockedError` when another live process holds it.

    Which lock, and why: the lock must belong to the training process alone and go when it
    dies, however it dies. A training forks DataLoader workers, and a fork shares its
    parent's open file descriptions. An `flock` (and an open-file-description lock,
    `F_OFD_SETLK`) belongs to the open file description, so each worker held it too, and a
    worker orphaned by a `kill -9` of the trainer kept the folder locked forever; `O_CLOEXEC`
    does not help (a fork without exec keeps every descriptor). A POSIX record lock
    (`fcntl.lockf`, `F_SETLK`) belongs to the process: a fork does not inherit it and the
    kernel drops it when the process exits or is killed. Its known flaw is that closing any
    descriptor of the file in the holding process drops it, and that it never excludes its
    own process; only `RunLock` opens the file, and a per-process table of held folders
    refuses a second `RunLock` on a folder this process holds.

    A refusal names the pid recorded in the file; when that pid is no longer running (the
    lock is held by a process it left behind, or by one in another pid namespace) the
    message says so and names the process the kernel reports as the holder.
    """

    _held: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of each held lock file -> pid

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        user: str = "training",
        instead: str = "train into another --out folder",
    ) -> None:
        """`user` names what holds the lock in a refusal and `instead` the way around it
        (a decode or QA results folder takes the same lock: `llm_decode.runner.decode`)."""
        self.path = Path(path)
        self.lock_path = self.path / LOCK_FILE
        self.user, self.instead = user, instead
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self._held_here():
                # Opening and closing the file again would drop this process's own lock.
                raise RunLockedError(self._refusal(str(os.getpid()), os.getpid()))
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunFolderError(
                f"{self.path}: cannot use as a run folder ({exc.strerror or exc})"
            ) from None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            recorded = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunLockedError(self._refusal(recorded, holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._key = fd, key
        RunLock._held[key] = os.getpid()
        return self

    def _held_here(self) -> bool:
        try:
            info = self.lock_path.stat()
        except FileNotFoundError:
            return False
        return RunLock._held.get((info.st_dev, info.st_ino)) == os.getpid()

    def _refusal(self, recorded: str, holder: int | None) -> str:
        if not recorded.isdigit() or pid_running(int(recorded)):
            return (
                f"{self.path}: in use by another {self.user} (pid {recorded}); "
                f"wait for it to finish, or {self.instead}"
            )
        held_by = f"pid {holder}" if holder else "another process"
        return (
            f"{self.path}: locked by {held_by}, but the {self.user} recorded in "
            f"{self.lock_path} (pid {recorded}) is no longer running; stop {held_by}, "
            f"or {self.instead}"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        if self._key is not None:
            RunLock._held.pop(self._key, None)
        self._fd = self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def pid_running(pid: int) -> bool:
    """Whether a process `pid` exists here (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _lock_holder(fd: int) -> int | None:
    """The pid the kernel names as the holder of a write lock on `fd`'s file (F_GETLK), or
    None where the platform's `struct flock` layout is not the one packed here (Linux)."""
    import fcntl
    import struct
    import sys

    if sys.platform != "linux" or struct.calcsize("P") != 8:
        return None
    layout = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid (64-bit Linux, padded)
    try:
        query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        kind, _, _, _, pid = struct.unpack(layout, answer)
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None
