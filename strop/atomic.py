"""Writing one output file: atomically, only over a regular file, one line when it fails.

Torch-free, and free of any schema: the scene files, the run folder, the feature cache, the
reports, the grammar outputs, the decoders' results and the benchmarks all write through
here (`strop.output_unit` builds multi-file units on it).

Design decisions
- The new bytes go to a temporary name in the target's own folder (same filesystem, so the
  final `os.replace` is one atomic rename), and a failed write removes its temporary file.
- Only a regular file (or nothing) is written over (`refuse_non_regular`): opening a FIFO
  for writing blocks until a reader comes, forever, and `os.replace` over a FIFO or a device
  node puts a regular file in its place (as root, `bench gpu --json /dev/null` replaced the
  machine's /dev/null). Appends open with O_NONBLOCK and check what they opened
  (`open_for_append`), so no path can make a writer wait.
- A write that fails is one line naming the path (`write_error`, `OutputPathError`), not a
  traceback; a full disk (ENOSPC, EDQUOT) also names the space left on its file system and
  what was kept (`DiskFullError`). The old file is untouched either way.
- The result gets the permissions a plain `open()` would give under the current umask:
  `mkstemp` creates 0600 files, which would hide a run's outputs from the rest of a group.
  The umask is read from `/proc/self/status` (`current_umask`), not by setting it: setting
  it to read it changes it for every thread of the process meanwhile.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

#: Why a folder cannot be made where a regular file already stands (mkdir says "File exists").
IN_THE_WAY = "a file stands where a folder is needed"

#: What each kind of file that is not a regular one is called in messages.
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


class OutputPathError(ValueError):
    """An output path that cannot be written (not a regular file, a read-only folder, a full
    disk); one line. `reason` is why, without the path, for callers that name another."""

    reason: str = ""


class DiskFullError(OutputPathError):
    """A write that failed for want of space (ENOSPC, or a quota: EDQUOT); one line naming
    the space left. `kept` says what of the earlier output is still whole."""

    def __init__(self, message: str, kept: str) -> None:
        super().__init__(message)
        self.kept = kept


def shown(path: str | os.PathLike[str]) -> str:
    """A path as printable text: bytes that are not UTF-8 (kept by Python as surrogates)
    appear as `\\xNN` escapes instead of breaking whatever prints or writes the message."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def refuse_non_regular(path: str | os.PathLike[str]) -> None:
    """Refuse, in one line, an existing `path` that is not a regular file.

    Every output path of the three tools and the benchmarks goes through here (directly, or
    through `check_writable`, `atomic_write`, `OutputUnit.commit`, `open_for_append`). Links
    are followed: writing through a link to /dev/null writes to the device, so that is a
    character device here. A path that cannot be looked at (missing, a dangling link, a
    parent that is a file) passes: the write itself says why it fails.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    via = " (through a link)" if os.path.islink(path) else ""
    error = OutputPathError(
        f"{shown(path)}: is {kind}{via}, not a regular file; outputs are written only to "
        "regular files: choose another path"
    )
    error.reason = f"{kind}, not a regular file"
    raise error


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for want of space: ENOSPC or EDQUOT, also from writers that keep
    only the text of the OS error (safetensors' Rust writer says "... (os error 28)")."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    markers = (os.strerror(errno.ENOSPC), f"os error {errno.ENOSPC}", os.strerror(errno.EDQUOT))
    return any(marker in str(exc) for marker in markers)


def free_space(path: str | os.PathLike[str]) -> str:
    """The space left on the file system that holds `path` (its nearest existing folder),
    as text: "0 bytes free", "1.5 MiB free"."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = float(shutil.disk_usage(here).free)
    except OSError:
        return "free space unknown"
    unit = "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            break
        free /= 1024
    return f"{free:.0f} bytes free" if unit == "bytes" else f"{free:.1f} {unit} free"


def write_error(
    path: str | os.PathLike[str],
    exc: BaseException,
    kept: str = "the files there before are unchanged",
    error: type[OutputPathError] = OutputPathError,
) -> OutputPathError:
    """One line for an output that could not be written: a full disk names the space left on
    its file system and what was `kept` (`DiskFullError`); any other failure is an `error`
    naming the reason."""
    made: OutputPathError
    if is_disk_full(exc):
        reason = f"the disk is full: {free_space(path)}"
        made = DiskFullError(
            f"{shown(path)}: cannot write the output here ({reason}); {kept}", kept
        )
    else:
        if isinstance(exc, OutputPathError) and exc.reason:
            reason = exc.reason
        elif isinstance(exc, FileExistsError):
            reason = IN_THE_WAY
        elif isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        made = error(f"{shown(path)}: cannot write the output here ({reason})")
    made.reason = reason
    return made


def open_for_append(path: str | os.PathLike[str]) -> int:
    """A descriptor open for appending to the regular file `path` (created when missing).

    O_NONBLOCK: a FIFO that appears after the check fails the open (ENXIO) instead of
    waiting for a reader; what was opened is checked again before it is used."""
    refuse_non_regular(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o666)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        refuse_non_regular(path)
        raise OutputPathError(f"{shown(path)}: not a regular file when opened; try again")
    os.set_blocking(fd, True)
    return fd


def _proc_umask() -> int | None:
    """The `Umask:` line of `/proc/self/status` (Linux since 4.7), or None without it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    """The only other way to read the umask: set it and set it back (a window in which a
    file another thread creates gets umask 0), so it is done once, at import."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The umask where /proc cannot tell it, read once at import (before the tools start threads).
_IMPORT_UMASK = _umask_by_setting() if _proc_umask() is None else None


def current_umask() -> int:
    """The process's umask, read without changing it.

    Linux reports it in `/proc/self/status`; checked on Linux 6.18 (x86_64, glibc, CPython
    3.11). Elsewhere, or without /proc, it is the umask at import (`_IMPORT_UMASK`): a later
    change of the umask is not seen there, which is the price of never setting it while
    threads run."""
    mask = _proc_umask()
    if mask is not None:
        return mask
    return _IMPORT_UMASK if _IMPORT_UMASK is not None else _umask_by_setting()


def plain_file_mode() -> int:
    """The permission bits `open(path, "w")` gives a new file under the current umask."""
    return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it over `path`.

    A crash leaves the old file (or none), never half a file; the result gets the permissions
    a plain `open()` would give (mkstemp's are 0600). An existing `path` that is not a regular
    file is refused before `write` runs; a write that fails is one line (`write_error`).
    """
    path = Path(path)
    refuse_non_regular(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, plain_file_mode())
        refuse_non_regular(path)  # again: the write may have taken minutes
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text (UTF-8) to a temporary file beside `path`, then rename it over `path`."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)
