"""The run folder's JSON files: one object per file, one object per line (`metrics.jsonl`).

Reads go through the one JSON reader (`strop.jsonfile`), writes through `strop.atomic`;
every failure is a one-line `RunFolderError` naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from strop.atomic import atomic_write_text, free_space, is_disk_full, open_for_append
from strop.jsonfile import json_kind, read_json_object


class RunFolderError(ValueError):
    """A run folder or one of its files that cannot be used; the message is one line."""


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file that holds one object (every JSON file of a run folder does)."""
    return read_json_object(path, RunFolderError)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk, so a killed process keeps every row written.

    A failed write (disk full) is a one-line `RunFolderError` naming the space left; it may
    leave a torn last line, which `read_jsonl` skips and a resumed training drops
    (`MetricLog.truncate`). A path that is not a regular file (a FIFO would block the open
    forever) is refused."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(open_for_append(path), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        why = f"the disk is full: {free_space(path)}" if is_disk_full(exc) else exc.strerror
        raise RunFolderError(f"{path}: cannot append a row ({why or exc})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read JSON lines; a torn last line (process killed mid-write) is skipped, others are errors."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i == len(lines) - 1:
                break
            raise RunFolderError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(row, dict):
            raise RunFolderError(
                f"{path}: line {i + 1}: expected a JSON object, got {json_kind(row)}"
            )
        rows.append(row)
    return rows
