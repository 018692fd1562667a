"""Reading a JSON file, and saying in one line why it cannot be read or validated.

Torch-free and schema-free: the scenes file, every JSON file of a run folder, configuration
files, an exported tokenizer's `config.json` and the feature cache's index are all read by
`read_json_value` / `read_json_object`; each caller passes its own error type, so a reader
keeps raising what its callers catch. `validation_line` is the one place a pydantic
`ValidationError` becomes a line naming the file, the field, the message and the value
(`strop.cli_app.one_line` joins `error_line`s for the command lines).

Design decisions
- Every failure is one line starting with the path: missing, unreadable, not UTF-8, not
  JSON (with the line of the fault), nested beyond Python's recursion limit (the decoder
  raises `RecursionError`, which would otherwise be a traceback), not an object.
- A field is written as `a.b[0].c`: list indices in brackets, as a reader of the file sees it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


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


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as `a.b[0].c`."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def shown_value(value: Any, width: int = 60) -> str:
    """A rejected value for a message: its repr cut to `width`; a whole object or list is
    named by its type (it may be a whole scene)."""
    if isinstance(value, dict | list):
        return type(value).__name__
    return repr(value)[:width]


def error_message(err: Mapping[str, Any]) -> str:
    """One pydantic error's message, without the "Value error, " a validator's raise gets."""
    return str(err["msg"]).removeprefix("Value error, ")


def error_line(
    err: Mapping[str, Any], *, prefix: str = "", got: bool = False, root: str = ""
) -> str:
    """One pydantic error as `PREFIX+LOC: MSG (got VALUE)`; an error of the whole model (no
    location) is placed at `root`, or is its message alone."""
    field = prefix + (field_path(tuple(err["loc"])) or root)
    line = f"{field}: {error_message(err)}" if field else error_message(err)
    return line + (f" (got {shown_value(err.get('input'))})" if got else "")


def validation_line(
    exc: ValidationError, where: str = "", *, prefix: str = "", got: bool = False
) -> str:
    """The first error of `exc` as one line: `WHERE field PREFIX+LOC: MSG (got VALUE)`.

    `where` names the file and ends with its own colon (`PATH:`), or names a part of it
    (`PATH: scene 3`); without it the line starts at the field. `prefix` places a
    sub-model's fields in the file (`model.`); `got` adds the rejected value."""
    line = error_line(exc.errors()[0], prefix=prefix, got=got, root="<root>")
    return f"{where} field {line}" if where else line
