"""Command-line options declared once, on the pydantic fields they set (torch-free).

An option is a pydantic field marked with `Flag` in its `Annotated` type; the field's type,
default and description are the option's type, default and help:

    class ProtocolConfig(BaseModel):
        shots: Annotated[int, Flag()] = Field(50, ge=1, description="In-context examples.")

    class DecodeConfig(BaseModel):
        protocol: ProtocolConfig          # nested models are searched for flags too
        engine: Annotated[VLLMEngineOptions, FlagGroup(help_prefix="vllm backend: ")]

`options_of(Model, ...)` lists a model's options (depth first, in field order), and
`command(body, Model, ...)` is a typer command function with one option per entry: typer
parses the command line, and `body` receives the values nested as the models nest them
(`{"k": 16, "protocol": {"shots": 50, ...}}`). Validation stays with the models, which the
body builds from those values, so an option's bounds and its error message live in one place.

Design decisions
- `Flag(...)` overrides only what the command line needs differently from the model: its
  spelling (`--stream/--no-stream`; default `--field-name`), a default (`None`: "not given,
  let something else decide", where the model's default would decide too early), a help
  text, or the type of what is typed (`--extra-body` is JSON text for a dict field). Every
  override is on the field itself, so there is still one declaration to read.
- `FlagGroup` on a nested model's field gives all its flags a help prefix and default
  (the vLLM engine options: "vllm backend: ...", `None` so the preset decides).
- `Arg()` marks a positional argument (`strop eval RUN`) the same way; `Flag(min=1,
  callback=...)` passes click's own checks on (ranges, `--device`'s callback, a metavar),
  so a value click refused before is refused in the same words.
- A command whose options set no config (`strop eval`'s run folder, `--device`) declares
  them on a small options model in its own module; commands share fields by inheriting
  such models, and a command's body may validate its values into its model for typed
  access (the models hold no bounds click does not already check).
- A command may leave options out (`exclude`): `strop-llm qa` is decode's options less the
  scene-only ones, from the same fields.
- The command function keeps the options it was derived from (`.options`), so that
  `tests/test_cli_options.py` compares every click command with its declaration.
- The signature is built with `inspect.Signature`, which typer reads as it reads any
  function's; no typer internals are used (checked on typer 0.29).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

#: "the model's default" (a sentinel, since `None` is a default a flag may set)
KEEP: Any = type("Keep", (), {"__repr__": lambda self: "KEEP"})()


@dataclass(frozen=True, init=False)
class Flag:
    """Marks a pydantic field as a command-line option; every argument overrides the field.

    `checks` go to `typer.Option` as they are (`min`, `max`, `callback`, `metavar`,
    `show_default`): what click checks or shows before any model sees the value, so a bad
    value is a usage error in click's words."""

    decls: tuple[str, ...] = ()  # default: ("--field-name",)
    default: Any = KEEP
    help: str | None = None
    kind: Any = KEEP  # the type typed on the command line, where it differs from the field's
    checks: tuple[tuple[str, Any], ...] = ()

    def __init__(
        self,
        *decls: str,
        default: Any = KEEP,
        help: str | None = None,
        kind: Any = KEEP,
        **checks: Any,
    ) -> None:
        object.__setattr__(self, "decls", decls)
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "help", help)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "checks", tuple(checks.items()))


class Arg(Flag):
    """Marks a pydantic field as a positional argument (`strop eval RUN`); as `Flag`, less
    the spelling."""

    def __init__(self, *, help: str | None = None, **checks: Any) -> None:
        super().__init__(help=help, **checks)


@dataclass(frozen=True)
class FlagGroup:
    """On a nested model's field: a help prefix and default for all the flags inside."""

    help_prefix: str = ""
    default: Any = KEEP


@dataclass(frozen=True)
class Option:
    """One command-line option as derived from its field."""

    path: tuple[str, ...]  # field names from the outer model down
    decls: tuple[str, ...]
    kind: Any  # annotation typer converts to
    default: Any  # `...`: required
    help: str | None
    checks: dict[str, Any] = field(default_factory=dict)
    argument: bool = False  # positional

    @property
    def name(self) -> str:
        return self.path[-1]

    def typer_option(self) -> Any:
        if self.argument:
            return typer.Argument(self.default, help=self.help, **self.checks)
        return typer.Option(self.default, *self.decls, help=self.help, **self.checks)


def _marker(info: FieldInfo, kind: type) -> Any:
    return next((m for m in info.metadata if isinstance(m, kind)), None)


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _field_default(info: FieldInfo) -> Any:
    if info.is_required():
        return ...
    # a factory's value is built by the model when the option is not given
    return None if info.default_factory is not None else info.default


def options_of(
    model: type[BaseModel],
    exclude: Iterable[str] = (),
    _path: tuple[str, ...] = (),
    _group: FlagGroup = FlagGroup(),
) -> list[Option]:
    """`model`'s options: its flagged fields, and those of the models nested in it, in
    field order; `exclude` names options (by field name) to leave out."""
    excluded = set(exclude)
    found: list[Option] = []
    for name, info in model.model_fields.items():
        if name in excluded:
            continue
        nested = _model_type(info.annotation)
        if nested is not None:
            group = _marker(info, FlagGroup) or _group
            found += options_of(nested, excluded, (*_path, name), group)
            continue
        flag = _marker(info, Flag)
        if flag is None:
            continue
        default = flag.default
        if default is KEEP:
            default = _group.default if _group.default is not KEEP else _field_default(info)
        found.append(
            Option(
                path=(*_path, name),
                decls=flag.decls or (f"--{name.replace('_', '-')}",),
                kind=info.annotation if flag.kind is KEEP else flag.kind,
                default=default,
                help=flag.help or f"{_group.help_prefix}{info.description or ''}" or None,
                checks=dict(flag.checks),
                argument=isinstance(flag, Arg),
            )
        )
    return found


def nest(options: Iterable[Option], values: dict[str, Any]) -> dict[str, Any]:
    """The values of a command's parameters (by option name) nested along the options'
    paths, as the models take them."""
    nested: dict[str, Any] = {}
    for option in options:
        target = nested
        for part in option.path[:-1]:
            target = target.setdefault(part, {})
        target[option.name] = values[option.name]
    return nested


def command(
    body: Callable[[dict[str, Any]], None],
    *models: type[BaseModel],
    exclude: Iterable[str] = (),
    doc: str | None = None,
) -> Callable[..., None]:
    """A typer command function whose options are those of `models` (in order, less
    `exclude`); it calls `body` with their values nested (`nest`)."""
    excluded = tuple(exclude)
    options = [o for m in models for o in options_of(m, excluded)]
    names = [o.name for o in options]
    if len(set(names)) != len(names):  # a parameter name must be unique: a declaration bug
        raise ValueError(
            f"options declared twice: {sorted({n for n in names if names.count(n) > 1})}"
        )

    def run(**values: Any) -> None:
        body(nest(options, values))

    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                o.name, inspect.Parameter.KEYWORD_ONLY, default=o.typer_option(), annotation=o.kind
            )
            for o in options
        ],
        return_annotation=None,
    )
    run.__annotations__ = {o.name: o.kind for o in options} | {"return": None}
    run.__doc__ = doc if doc is not None else body.__doc__
    run.__name__ = getattr(body, "__name__", "command")
    run.options = options  # type: ignore[attr-defined]  # what the command was derived from
    return run
