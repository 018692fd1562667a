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
- A unit that is aborted removes the folders its `open` created, once empty: a failed
  `strop analyze` or `export-model` (a full disk) left an empty `analysis/` or `--out`.
- Only regular files are replaced: an owned name that is a FIFO, a device, a socket or a
  folder is refused before anything is moved (`refuse_non_regular`); `os.replace` would have
  put a regular file in its place. Files moved in get the mode a plain `open()` gives under
  the umask (safetensors writes 0600).
- A full disk while the unit is written or moved in is one line naming the output folder
  and the space left (`writing`, `write_error`), and the previous unit stays whole.
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

from strop.atomic import IN_THE_WAY as IN_THE_WAY  # re-exported: the tests' word for it
from strop.atomic import (
    DiskFullError,
    OutputPathError,
    is_disk_full,
    plain_file_mode,
    refuse_non_regular,
    shown,
    write_error,
)
from strop.runs.files import RunFolderError
from strop.runs.lock import pid_running


class OutputUnitError(RunFolderError, OutputPathError):
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


def check_writable(path: str | os.PathLike[str], make_parent: bool = True) -> None:
    """Fail now, in one line, when the single file `path` could not be written later (a
    read-only or immutable folder, a file in a parent's place, an immutable file, a path
    that is not a regular file): a file is created and removed beside it, and an existing
    `path` is opened for writing. The parent folder is created, or with `make_parent=False`
    a missing one is refused."""
    path = Path(path)
    refuse_non_regular(path)
    if not make_parent and not path.parent.is_dir():
        what = "not a folder" if path.parent.exists() else "no such folder"
        raise OutputUnitError(
            f"{shown(path)}: cannot write the output here ({shown(path.parent)}: {what}; "
            "create it first)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
        if path.exists():
            # O_NONBLOCK: should a FIFO appear after the check above, opening it fails
            # (ENXIO) instead of waiting for a reader
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        raise write_error(path, exc, error=OutputUnitError) from None


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
        #: The folders `open` created (the output folder and missing parents), innermost
        #: first; an aborted unit removes those that are empty again.
        self._created: list[Path] = []
        self._committed = False
        #: Set by `commit`: whether files of an earlier unit were there (replaced or deleted).
        self.replaced = False

    def open(self) -> Path:
        """Create the folder and a fresh staging folder; returns the staging folder."""
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._created = missing
            self._remove_dead_stagings()
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir()
        except OSError as exc:
            self._remove_created()
            raise write_error(self.folder, exc, error=OutputUnitError) from None
        return self.staging

    def commit(self, check: Callable[[], None] | None = None) -> bool:
        """Move the staged files in and delete owned files this write did not produce.
        Returns whether files of an earlier unit were there (replaced or deleted). `check`
        runs under the folder's lock before anything moves: a refusal it raises (files of
        other weights already there) cannot race a writer of the same folder."""
        new = sorted(p.relative_to(self.staging) for p in self.staging.rglob("*") if p.is_file())
        produced = set(new)
        marker = marker_path(self.folder, self.name)
        mode = plain_file_mode()
        try:
            with folder_lock(self.folder):
                if check is not None:
                    check()
                for rel in new:  # before anything is moved: all or nothing
                    refuse_non_regular(self.folder / rel)
                before = self._owned_files()
                stale = [p for p in before if p.relative_to(self.folder) not in produced]
                _write_synced(marker, self.command + "\n")
                for rel in new:
                    target = self.folder / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.chmod(self.staging / rel, mode)
                    os.replace(self.staging / rel, target)
                for path in stale:
                    path.unlink(missing_ok=True)
                marker.unlink()
        except OSError as exc:
            moved = marker.is_file()  # the marker tells readers, and the message says so
            kept = (
                f"{self.command} was interrupted while moving its files in; rerun it"
                if moved
                else "the files there before are unchanged"
            )
            raise write_error(self.folder, exc, kept, OutputUnitError) from None
        self._committed = True
        self.replaced = bool(before)
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.replaced

    def abort(self) -> None:
        """Remove the staging folder, and (unless committed) the folders `open` created."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if not self._committed:
            self._remove_created()

    @contextmanager
    def writing(self, check: Callable[[], None] | None = None) -> Iterator[Path]:
        """The staging folder, to write the unit into inside the block: committed when the
        block ends (`check` as in `commit`), aborted when it raises. Running out of space
        (while writing or moving in) is one `DiskFullError` line naming the output folder,
        not the staging file."""
        try:
            yield self.staging
            self.commit(check)
        except DiskFullError as exc:  # from `atomic_write` into the staging folder, or `commit`
            raise write_error(self.folder, exc, exc.kept, OutputUnitError) from None
        except Exception as exc:  # PIL, matplotlib, safetensors: the OS error, or its text
            if not is_disk_full(exc):
                raise
            raise write_error(self.folder, exc, error=OutputUnitError) from None
        finally:
            self.abort()

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

    def _remove_created(self) -> None:
        for folder in self._created:  # innermost first; rmdir keeps any folder not empty
            try:
                folder.rmdir()
            except OSError:
                break

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
