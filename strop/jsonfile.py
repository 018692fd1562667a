"""Reading a JSON file, and saying in one line why it cannot be read.

Torch-free and schema-free: the scenes file, every JSON file of a run folder, configuration
files, an exported tokenizer's `config.json` and the feature cache's index are all read by
`read_json_value` / `read_json_object`; each caller passes its own error type, so a reader
keeps raising what its callers catch.

Design decision: every failure is one line starting with the path: missing, unreadable, not
UTF-8, not JSON (with the line of the fault), nested beyond Python's recursion limit (the
decoder raises `RecursionError`, which would otherwise be a traceback), not an object.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file that cannot be read; the message is one line naming the file."""


def json_kind(value: Any) -> str:
    """What a JSON value is, for messages: 'a list', 'a string', 'null'."""
    if value is None:
        return "null"
    name = {list: "list", str: "string", bool: "boolean", dict: "object"}.get(type(value))
    return f"a {name}" if name else f"a {type(value).__name__}"


def read_json_value(
    path: str | os.PathLike[str],
    error: type[Exception] = JsonFileError,
    *,
    missing: str = "file not found",
) -> Any:
    """The JSON value in `path`; any failure raises `error("PATH: why")` (`missing` when
    there is no such file)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_json_object(
    path: str | os.PathLike[str],
    error: type[Exception] = JsonFileError,
    *,
    missing: str = "file not found",
) -> dict[str, Any]:
    """A JSON file that holds one object (as every JSON file the tools write does)."""
    data = read_json_value(path, error, missing=missing)
    if not isinstance(data, dict):
        raise error(f"{Path(path)}: expected a JSON object, got {json_kind(data)}")
    return data
