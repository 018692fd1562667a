"""`strop quickstart`: the whole pipeline on the embedded default."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from strop.cli_app import EXIT_INTERRUPTED, Commands, exit_on, fail, one_line
from strop.cli_options import Flag, command
from strop.quickstart.config import QuickstartConfig

commands = Commands()


class FreshOption(BaseModel):
    """The one option of `strop quickstart` that is no size of the experiment; the others are
    the `Flag`-marked fields of `strop.quickstart.config.QuickstartConfig`."""

    fresh: Annotated[bool, Flag()] = Field(
        False, description="Delete --out first instead of resuming."
    )


def quickstart_command(values: dict[str, Any]) -> None:
    """Render scenes, train K=32/64/128, export, evaluate, mine grammars, decode, report.

    Each stage is skipped when its output exists, so a rerun resumes where it stopped.
    """
    from strop.quickstart import QuickstartError, clean, quickstart

    values = dict(values)
    fresh, ks, fixed_k = values.pop("fresh"), values.pop("ks"), values.pop("fixed_k")
    try:
        k_values = tuple(int(v) for v in ks.split(",") if v.strip())
        qc = QuickstartConfig(**values, ks=k_values, fixed_k=fixed_k or None)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        fail(f"strop quickstart: {one_line(err)}", usage=True)
    if fresh:
        clean(qc.out)
    try:
        with exit_on(failed=(QuickstartError,)):
            quickstart(qc)
    except KeyboardInterrupt:
        typer.secho(
            "interrupted; what finished is kept and trainings wrote a checkpoint; rerun the same "
            "command to resume",
            fg="yellow",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


commands.command("quickstart")(command(quickstart_command, QuickstartConfig, FreshOption))
