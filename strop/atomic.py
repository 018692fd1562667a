"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Torch-free, and free of any schema: the scene files, the run folder, the feature cache, the
reports and the grammar outputs all write through here.

Design decisions
- The new bytes go to a temporary name in the target's own folder (same filesystem, so the
  final `os.replace` is one atomic rename), and a failed write removes its temporary file.
- The result gets the permissions a plain `open()` would give under the current umask:
  `mkstemp` creates 0600 files, which would hide a run's outputs from the rest of a group.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it over `path`.

    A crash leaves the old file (or none), never half a file; the result gets the permissions
    a plain `open()` would give (mkstemp's are 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text (UTF-8) to a temporary file beside `path`, then rename it over `path`."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)
