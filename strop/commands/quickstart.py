"""`strop quickstart`: the whole pipeline on the embedded default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from strop.cli_app import EXIT_INTERRUPTED, Commands, exit_on, fail, one_line
from strop.cli_options import Flag, command

commands = Commands()


class QuickstartOptions(BaseModel):
    """`strop quickstart`'s options. `strop.quickstart.QuickstartConfig` validates them (its
    bounds, its messages); they are not marked on it because importing that package imports
    torch, which `strop --help` does not."""

    out: Annotated[Path, Flag()] = Field(Path("runs/quickstart"), description="Output folder.")
    n_images: Annotated[int, Flag()] = Field(2000, description="CLEVR-like scenes to render.")
    steps: Annotated[int, Flag()] = Field(1200, description="Training steps per codebook size.")
    ks: Annotated[str, Flag()] = Field("32,64,128", description="Codebook sizes, comma-separated.")
    teacher: Annotated[str, Flag()] = Field(
        "pixels", description="Offline teacher: pixels or random-vit."
    )
    seed: Annotated[int, Flag()] = Field(0, description="Seed of data, training and decoding.")
    threads: Annotated[int, Flag()] = Field(
        1,
        description="torch threads; the figures depend on it (floating-point sums), so it is "
        "fixed.",
    )
    jobs: Annotated[int | None, Flag()] = Field(
        None,
        description="Runs trained side by side, one process each with --threads threads; the "
        "figures do not depend on it. Default: one per usable core, at most one per run.",
    )
    base_url: Annotated[str | None, Flag()] = Field(
        None, description="OpenAI-compatible endpoint: also decode with an LLM."
    )
    llm_model: Annotated[str, Flag()] = Field("qwen3.5", description="Model for --base-url.")
    fixed_k: Annotated[int, Flag()] = Field(
        64, description="Also train the fixed-length baseline at this K (0: skip it)."
    )
    fresh: Annotated[bool, Flag()] = Field(
        False, description="Delete --out first instead of resuming."
    )


def quickstart_command(values: dict[str, Any]) -> None:
    """Render scenes, train K=32/64/128, export, evaluate, mine grammars, decode, report.

    Each stage is skipped when its output exists, so a rerun resumes where it stopped.
    """
    from strop.quickstart import QuickstartConfig, QuickstartError, clean, quickstart

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


commands.command("quickstart")(command(quickstart_command, QuickstartOptions))
