"""What the three console scripts share (torch-free): the app, one way to declare commands,
one exit-code scheme, one-line errors.

Every command module of `strop`, `strop-grammar` and `strop-llm` declares its commands at
module level on a `Commands` list:

    commands = Commands()                       # or Commands("data", help=...) for a group

    @commands.command("train")
    def train_command(...): ...

and its CLI puts the lists together with `make_app(name, version, help, *command_lists)`.

Exit codes (the same for all three tools; `tests/test_foundation_cli.py` checks them):
- 0: done.
- 1 (`EXIT_FAILED`): the work was attempted and failed: data, a run folder, a checkpoint or a
  server did not hold or answer what was needed.
- 2 (`EXIT_USAGE`): the command line is wrong: an unknown option, a bad value, a configuration
  that does not validate. Click uses 2 for its own usage errors, so ours match them.
- 130: interrupted by Ctrl-C after saving what could be saved.

Design decisions
- Errors are printed as one line, `error: ...`, on stderr: the first line of the exception's
  message (pydantic errors become "field: message (got value)"). A traceback means a bug.
- Boolean flags show no value type in `--help`: typer 0.29 with click 8.2+ prints `<bool>`
  beside every flag (`--help` and `--version` included) as if it took a value. The command and
  group classes here give flags an empty metavar before the help is drawn. For the same
  reason a positional argument shows as `{run}` and a repeatable option as `<list[str]>`:
  arguments get their name in capitals (`RUN`, also on the usage line, where typer writes
  a required one as `{RUN}`), repeatable options `VALUE` unless they name their own metavar.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from strop.errors import one_line as one_line  # its home; the CLIs import it from here

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


def fail(error: BaseException | str, *, usage: bool = False) -> NoReturn:
    """Print `error: <one line>` on stderr and exit 2 (usage) or 1 (the work failed)."""
    typer.secho(f"error: {one_line(error)}", fg="red", err=True)
    raise typer.Exit(EXIT_USAGE if usage else EXIT_FAILED)


@contextmanager
def exit_on(
    usage: tuple[type[BaseException], ...] = (), failed: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn the listed exception types into one line and exit code 2 (`usage`) or 1 (`failed`).

    Anything else propagates: an unexpected exception is a bug and keeps its traceback.
    """
    try:
        yield
    except usage as exc:
        fail(exc, usage=True)
    except failed as exc:
        fail(exc)


def _hide_flag_types(params: Sequence[Any]) -> None:
    # Duck-typed: typer 0.29 has its own parameter classes, not click's.
    for param in params:
        if getattr(param, "metavar", "") is not None:
            continue
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif getattr(param, "param_type_name", "") == "argument" and param.name:
            param.metavar = param.name.upper()
        elif getattr(param, "multiple", False):
            param.metavar = "VALUE"


class StropCommand(TyperCommand):
    """A typer command whose `--help` shows no value type beside boolean flags."""

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        _hide_flag_types(params)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # `strop export [OPTIONS] RUN`, as click writes it, not typer's `{RUN}`.
        return [re.sub(r"^\{(.*)\}", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


class StropGroup(TyperGroup):
    """A typer group whose `--help` shows no value type beside boolean flags."""

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        _hide_flag_types(params)
        return params


class Commands:
    """The commands of one area, declared at module level; a named list becomes a group
    (`strop data ...`), an unnamed one adds its commands at the top level."""

    def __init__(self, group: str | None = None, help: str | None = None) -> None:
        self.group = group
        self.help = help
        self.entries: list[tuple[str, Callable[..., Any]]] = []

    def command(self, name: str) -> Callable[[F], F]:
        def add(func: F) -> F:
            self.entries.append((name, func))
            return func

        return add

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.entries]

    def register(self, app: typer.Typer) -> None:
        target = app
        if self.group is not None:
            target = typer.Typer(
                help=self.help, no_args_is_help=True, cls=StropGroup, add_completion=False
            )
            app.add_typer(target, name=self.group)
        for name, func in self.entries:
            target.command(name, cls=StropCommand)(func)


def make_app(name: str, version: str, help: str, *command_lists: Commands) -> typer.Typer:
    """A typer app named `name` with `--version` (prints `name version`) and the commands of
    `command_lists` in order."""
    app = typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        cls=StropGroup,
    )

    def _print_version(value: bool) -> None:
        if value:
            typer.echo(f"{name} {version}")
            raise typer.Exit()

    @app.callback()
    def _root(
        show_version: bool = typer.Option(
            False,
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ) -> None:
        pass

    _root.__doc__ = help
    for commands in command_lists:
        commands.register(app)
    return app
