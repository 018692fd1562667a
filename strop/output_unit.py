"""Multi-file outputs written as one unit: a reader sees the whole of one write, never a mix.

`strop analyze` (`RUN/analysis/`), `strop report` (`report.md`, `report.html`, their
figures) and `strop-grammar mine` (`RUN/grammar/` or `--out`, and an experiment's
comparison) each write several files that describe one result. Replaced one by one, a kill
midway left files of two results side by side (ngrams.tsv of corpus B beside summary.json
of corpus A) with nothing saying so.

Design decisions
- Written aside, then moved in: the writer fills a hidden staging folder beside the outputs
  (`FOLDER/.NAME.staging-PID`), so the previous unit stays whole and readable for the whole
  (long) work. Only when every file is written are they moved in, one `os.replace` each
  (a rename within one file system).
- Those moves are not one atomic step, so they are bracketed by a marker: `FOLDER/.NAME.
  incomplete` is written (and fsync'ed) before the first move and removed after the last.
  A kill inside that window (milliseconds) leaves the marker, and readers refuse the folder
  in one line naming the command to rerun (`require_complete`).
- A unit owns a list of names, not a folder: `--out` may name a folder holding other files,
  and an experiment's `figures/` holds both the report's figures and grammar's
  `rank_frequency.png`. A name ending in "/" owns everything below it. Owned files the new
  write did not produce (a `grammar.pcfg` of an older mine, erasure panels of other images)
  are deleted inside the bracket, so no file of an older unit survives beside a newer one.
- Opening the unit creates the folder and the staging folder, so an output folder that
  cannot be written fails before the work, in one line (`OutputUnitError`), and not after
  every image was encoded.
- Staging folders left by writers that are no longer running are removed on the next open.
- Commits of one folder are serialised by an exclusive `flock` on the folder (`folder_lock`):
  two writers racing into one folder each move their whole unit in, the later one wins.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from strop.runs import RunFolderError, pid_running


class OutputUnitError(RunFolderError):
    """An output folder that cannot be written, or a unit left incomplete; one line."""


def marker_path(folder: str | os.PathLike[str], name: str) -> Path:
    return Path(folder) / f".{name}.incomplete"


def require_complete(folder: str | os.PathLike[str], name: str) -> None:
    """Refuse a folder whose unit `name` was cut off while its files were moved in."""
    marker = marker_path(folder, name)
    if marker.is_file():
        command = marker.read_text(encoding="utf-8", errors="replace").strip() or "its writer"
        raise OutputUnitError(
            f"{shown(folder)}: incomplete output ({command} was interrupted while replacing its "
            f"files, so they mix two results); rerun {command}"
        )


def writable_error(folder: Path, exc: OSError) -> OutputUnitError:
    """One line for an output folder that cannot be written."""
    return OutputUnitError(f"{shown(folder)}: cannot write the output here ({_why(exc)})")


#: Why a folder cannot be made where a regular file already stands (mkdir says "File exists").
IN_THE_WAY = "a file stands where a folder is needed"


def _why(exc: OSError) -> str:
    return IN_THE_WAY if isinstance(exc, FileExistsError) else exc.strerror or str(exc)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, in one line, when the single file `path` could not be written later (a
    read-only or immutable folder, a file in a parent's place, an immutable file): a file is
    created and removed beside it, and an existing `path` is opened for writing."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
        if path.exists():
            os.close(os.open(path, os.O_WRONLY))
    except OSError as exc:
        raise OutputUnitError(
            f"{shown(path)}: cannot write the output here ({_why(exc)})"
        ) from None


def shown(path: str | os.PathLike[str]) -> str:
    """A path as printable text: bytes that are not UTF-8 (kept by Python as surrogates)
    appear as `\\xNN` escapes instead of breaking whatever prints or writes the message."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class OutputUnit:
    """Files of one result in `folder`, written aside and moved in together.

    `owned` lists the names (relative to `folder`; "sub/" for a whole sub-folder) that this
    unit writes; `command` is what a user reruns to write it again (named in refusals).
    Use as a context manager, or call `open()` early (to fail before the work on a folder
    that cannot be written), write into the returned staging folder, then `commit()`.
    """

    def __init__(
        self, folder: str | os.PathLike[str], name: str, owned: Iterable[str], command: str
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self.owned = tuple(owned)
        self.command = command
        self.staging = self.folder / f".{name}.staging-{os.getpid()}"

    def open(self) -> Path:
        """Create the folder and a fresh staging folder; returns the staging folder."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_dead_stagings()
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        except OSError as exc:
            raise writable_error(self.folder, exc) from None
        return self.staging

    def commit(self, check: Callable[[], None] | None = None) -> None:
        """Move the staged files in and delete owned files this write did not produce.
        `check` runs under the folder's lock before anything moves: a refusal it raises
        (files of other weights already there) cannot race a writer of the same folder."""
        new = sorted(p.relative_to(self.staging) for p in self.staging.rglob("*") if p.is_file())
        produced = set(new)
        marker = marker_path(self.folder, self.name)
        try:
            with folder_lock(self.folder):
                if check is not None:
                    check()
                stale = [
                    p for p in self._owned_files() if p.relative_to(self.folder) not in produced
                ]
                _write_synced(marker, self.command + "\n")
                for rel in new:
                    target = self.folder / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.staging / rel, target)
                for path in stale:
                    path.unlink(missing_ok=True)
                marker.unlink()
        except OSError as exc:
            raise writable_error(self.folder, exc) from None
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def _owned_files(self) -> list[Path]:
        found: list[Path] = []
        for name in self.owned:
            path = self.folder / name
            if name.endswith("/"):
                found += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
            elif path.is_file():
                found.append(path)
        return found

    def _remove_dead_stagings(self) -> None:
        prefix = f".{self.name}.staging-"
        for path in self.folder.glob(prefix + "*"):
            pid = path.name[len(prefix) :]
            if pid.isdigit() and not pid_running(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive `flock` on the output folder itself for one commit: two writers of the
    same unit (two exports into one folder) move their files in one after the other, so the
    last commit wins whole. Unlocked, one writer's marker was removed by the other mid-move
    (no marker while files of two results were side by side) and about half the commits of
    two racing writers failed on a marker already gone. A lock on the folder leaves no file."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
