"""The `--json PATH` of `python -m bench` and `python -m bench gpu`: checked before the first
row (an existing folder, a regular file or none: a FIFO would block the write forever) and
written atomically after the last; a problem is one `error: COMMAND: --json ...` line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from strop.atomic import OutputPathError, atomic_write_text
from strop.output_unit import check_writable


def json_writable(path: Path | None, command: str) -> bool:
    """True when `path` can be written (or none was given); else False, having said why."""
    if path is None:
        return True
    try:
        check_writable(path, make_parent=False)
    except OutputPathError as exc:
        print(f"error: {command}: --json {exc}", file=sys.stderr)
        return False
    return True


def write_json(path: Path, report: dict[str, Any], command: str) -> bool:
    """Write `report` to `path` atomically; False, having said why, when it cannot be."""
    try:
        atomic_write_text(path, json.dumps(report, indent=2))
    except OutputPathError as exc:  # a full disk after the rows: say so, in one line
        print(f"error: {command}: --json {exc}", file=sys.stderr)
        return False
    return True
