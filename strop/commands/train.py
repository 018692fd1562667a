"""`strop train`: train STROP on a dataset folder, or resume the run in `--out`.

torch is imported inside the command body so `strop --help` stays fast. Multi-GPU:
`torchrun --nproc_per_node N -m strop.cli train ...` (each process runs this command; rank 0
writes the run folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from strop.cli_app import EXIT_INTERRUPTED, Commands, exit_on
from strop.cli_options import Flag, command

commands = Commands()


class TrainOptions(BaseModel):
    """`strop train`'s options: `make_run_config`'s parameters (a preset, a file and flags
    that each stand for a config field or two, resolved there), then the run's own."""

    data: Annotated[Path, Flag()] = Field(description="Dataset folder (CLEVR layout or images).")
    config: Annotated[Path | None, Flag()] = Field(
        None, description="Base configuration file (e.g. configs/clevr-dino-s.json)."
    )
    preset: Annotated[str | None, Flag()] = Field(
        None, description="Model preset: tiny, S or M (default S; not with --config)."
    )
    teacher: Annotated[str | None, Flag()] = Field(
        None,
        description="dinov3-s|dinov3-b|dinov3-l|random-vit|pixels (default dinov3-s, or the "
        "config's).",
    )
    k: Annotated[int | None, Flag()] = Field(
        None, description="Codebook size K (default: the preset's)."
    )
    out: Annotated[Path, Flag()] = Field(
        description="Run folder; resumed when it has a checkpoint."
    )
    steps: Annotated[int | None, Flag()] = Field(
        None,
        description="Total steps; the lr warm-up/hold, w_div warm-up and curriculum phases keep "
        "the paper's share of the run (default: the paper's 500k). On a run that already "
        "has a checkpoint: train on to this step, keeping the run's schedule.",
    )
    batch_size: Annotated[int | None, Flag()] = Field(None, description="Images per step per GPU.")
    sets: Annotated[list[str], Flag("--set", metavar="KEY=VALUE")] = Field(
        [],
        description="Override any config field, e.g. --set curriculum.phase_steps=30,60,80,100 "
        "--set train.lr=1e-4 (repeatable).",
    )
    stop_at: Annotated[int | None, Flag()] = Field(
        None, description="Stop (with a checkpoint) at this step; resume later."
    )
    progress: Annotated[bool, Flag("--progress/--no-progress")] = Field(
        True, description="Show a progress bar."
    )


def train_command(values: dict[str, Any]) -> None:
    """Train (or resume) a STROP run; writes config.json, metrics.jsonl and checkpoints/."""
    from pydantic import ValidationError

    from strop.data.datasets import DataError
    from strop.training.checkpoint import CheckpointError
    from strop.training.config import ConfigError, make_run_config
    from strop.training.trainer import TrainingDiverged, train

    o = TrainOptions.model_validate(values)
    out = o.out
    try:
        with exit_on(usage=(ConfigError, ValidationError), failed=(DataError,)):
            cfg = make_run_config(
                o.data, o.preset, o.teacher, o.k, o.steps, o.batch_size, o.sets, o.config,
                resume_dir=out,
            )  # fmt: skip
        with exit_on(
            usage=(ConfigError,),
            failed=(CheckpointError, TrainingDiverged, DataError, FileNotFoundError, ValueError),
        ):
            run = train(cfg, out, progress=o.progress, stop_at=o.stop_at)
    except KeyboardInterrupt:
        typer.secho(
            f"interrupted; checkpoint saved in {out / 'checkpoints'}; rerun the same "
            "command to resume",
            fg="yellow",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    typer.echo(f"trained: {run}")


commands.command("train")(command(train_command, TrainOptions))
