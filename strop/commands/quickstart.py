"""`strop quickstart`: the whole pipeline on the embedded default."""

from __future__ import annotations

from pathlib import Path

import typer

from strop.cli_app import EXIT_INTERRUPTED, Commands, exit_on, fail, one_line

commands = Commands()


@commands.command("quickstart")
def quickstart_command(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Output folder."),
    n_images: int = typer.Option(2000, "--n-images", help="CLEVR-like scenes to render."),
    steps: int = typer.Option(1200, "--steps", help="Training steps per codebook size."),
    ks: str = typer.Option("32,64,128", "--ks", help="Codebook sizes, comma-separated."),
    teacher: str = typer.Option(
        "pixels", "--teacher", help="Offline teacher: pixels or random-vit."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of data, training and decoding."),
    threads: int = typer.Option(
        1,
        "--threads",
        help="torch threads; the figures depend on it (floating-point sums), so it is fixed.",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        help="Runs trained side by side, one process each with --threads threads; the figures "
        "do not depend on it. Default: one per usable core, at most one per run.",
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="OpenAI-compatible endpoint: also decode with an LLM."
    ),
    llm_model: str = typer.Option("qwen3.5", "--llm-model", help="Model for --base-url."),
    fixed_k: int = typer.Option(
        64, "--fixed-k", help="Also train the fixed-length baseline at this K (0: skip it)."
    ),
    fresh: bool = typer.Option(False, "--fresh", help="Delete --out first instead of resuming."),
) -> None:
    """Render scenes, train K=32/64/128, export, evaluate, mine grammars, decode, report.

    Each stage is skipped when its output exists, so a rerun resumes where it stopped.
    """
    from strop.quickstart import QuickstartConfig, QuickstartError, clean, quickstart

    try:
        k_values = tuple(int(v) for v in ks.split(",") if v.strip())
        qc = QuickstartConfig(
            out=out, n_images=n_images, steps=steps, ks=k_values, teacher=teacher,
            seed=seed, threads=threads, jobs=jobs, base_url=base_url, llm_model=llm_model, fixed_k=fixed_k or None,
        )  # fmt: skip
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
