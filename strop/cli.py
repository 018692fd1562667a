"""The `strop` command line. Each area registers its commands from `strop.commands.<area>`.

Command modules import torch inside the command bodies, so `strop --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

from strop import __version__

app = typer.Typer(
    name="strop",
    help="STROP: train variable-length visual programs, export, evaluate, analyse and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Each module defines `register(app)`; order is the order of `strop --help`.
COMMAND_MODULES = (
    "strop.commands.data",
    "strop.commands.model",
    "strop.commands.train",
    "strop.commands.evaluation",
    "strop.commands.quickstart",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"strop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """STROP toolkit."""


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
