"""An error as one line: any exception, and a pydantic `ValidationError` in particular.

Torch-free and typer-free, so the library raises the lines the command lines print:
`one_line` is what `strop.cli_app.fail` prints after `error: `, `validation_line` is the one
place a `ValidationError` becomes a line naming the file, the field, the message and the value.

Design decision: a field is written as `a.b[0].c` (list indices in brackets, as a reader of
the file sees it), and the "Value error, " pydantic puts before a validator's message is
dropped: the line says what is wrong, not how it was found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


def one_line(error: BaseException | str) -> str:
    """The first line of an error's message; pydantic errors name field, message and value."""
    errors = getattr(error, "errors", None)
    if callable(errors) and type(error).__name__ == "ValidationError":
        return "; ".join(error_line(e, got=bool(e["loc"])) for e in errors())
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0]


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
