"""`strop train`: train STROP on a dataset folder, or resume the run in `--out`.

torch is imported inside the command body so `strop --help` stays fast. Multi-GPU:
`torchrun --nproc_per_node N -m strop.cli train ...` (each process runs this command; rank 0
writes the run folder).
"""

from __future__ import annotations

from pathlib import Path

import typer

from strop.cli_app import EXIT_INTERRUPTED, Commands, exit_on

commands = Commands()


@commands.command("train")
def train_command(
    data: Path = typer.Option(..., "--data", help="Dataset folder (CLEVR layout or images)."),
    config: Path | None = typer.Option(
        None, "--config", help="Base configuration file (e.g. configs/clevr-dino-s.json)."
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Model preset: tiny, S or M (default S; not with --config)."
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="dinov3-s|dinov3-b|dinov3-l|random-vit|pixels (default dinov3-s, or the config's).",
    ),
    k: int | None = typer.Option(None, "--k", help="Codebook size K (default: the preset's)."),
    out: Path = typer.Option(..., "--out", help="Run folder; resumed when it has a checkpoint."),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="Total steps; the lr warm-up/hold, w_div warm-up and curriculum phases keep "
        "the paper's share of the run (default: the paper's 500k). On a run that already "
        "has a checkpoint: train on to this step, keeping the run's schedule.",
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step per GPU."),
    sets: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override any config field, e.g. --set curriculum.phase_steps=30,60,80,100 "
        "--set train.lr=1e-4 (repeatable).",
    ),
    stop_at: int | None = typer.Option(
        None, "--stop-at", help="Stop (with a checkpoint) at this step; resume later."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train (or resume) a STROP run; writes config.json, metrics.jsonl and checkpoints/."""
    from pydantic import ValidationError

    from strop.data.datasets import DataError
    from strop.training.checkpoint import CheckpointError
    from strop.training.config import ConfigError, make_run_config
    from strop.training.trainer import TrainingDiverged, train

    try:
        with exit_on(usage=(ConfigError, ValidationError), failed=(DataError,)):
            cfg = make_run_config(
                data, preset, teacher, k, steps, batch_size, sets, config, resume_dir=out
            )
        with exit_on(
            usage=(ConfigError,),
            failed=(CheckpointError, TrainingDiverged, DataError, FileNotFoundError, ValueError),
        ):
            run = train(cfg, out, progress=progress, stop_at=stop_at)
    except KeyboardInterrupt:
        typer.secho(
            f"interrupted; checkpoint saved in {out / 'checkpoints'}; rerun the same "
            "command to resume",
            fg="yellow",
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    typer.echo(f"trained: {run}")
