"""What the three console scripts share: a typer app with `--version` (torch-free)."""

from __future__ import annotations

import typer


def make_app(name: str, version: str, help: str) -> typer.Typer:
    """A typer app named `name` whose root accepts `--version` (prints `name version`)."""
    app = typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
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
    return app
