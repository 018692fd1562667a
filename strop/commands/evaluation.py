"""`strop export`, `strop eval`, `strop analyze`, `strop report`.

Torch and the model are imported inside the command bodies so `strop --help` stays fast.
Errors at the edge print one line: a bad `--length-mode` exits 2 (usage); a run folder, checkpoint, scenes file or dataset that cannot be used exits 1 (the work failed).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

import typer

from strop.cli_app import Commands, exit_on, fail
from strop.devices import device_option

commands = Commands()

#: Exit 1: the run folder, scenes, dataset or (added by `_model_errors`) checkpoint failed.
_WORK_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Exit 2: the command line is wrong (a `--length-mode` that does not parse). It is a
    ValueError too; `exit_on` tries the usage errors first. A ConfigError here comes from the
    run's own config.json, so it is a failure of the run folder (exit 1)."""
    from strop.evaluation.export import LengthModeError

    return (LengthModeError,)


def _model_errors() -> tuple[type[BaseException], ...]:
    # Importing CheckpointError imports torch, which `strop report` does not need.
    from strop.training.checkpoint import CheckpointError

    return (*_WORK_ERRORS, CheckpointError)


RUN_ARG = typer.Argument(
    ..., help="Run folder (holds config.json and checkpoints/).", show_default=False
)
SPLIT_OPT = typer.Option("val", "--split", help="Dataset split to encode (train, val, test).")
EXPORT_SPLIT_OPT = typer.Option(
    "val",
    "--split",
    help="Split(s) to encode, comma-separated (e.g. train,val): one file, rows tagged.",
)
MODE_OPT = typer.Option(
    None,
    "--length-mode",
    help="head (the length head), fixed (all L_max tokens) or search:EPS (shortest prefix "
    "whose align error <= EPS). Default: fixed for runs trained fixed-length, else head.",
    show_default=False,
)
DATA_OPT = typer.Option(
    None, "--data", help="Dataset folder; default: data.path from the run's config.json."
)
BATCH_OPT = typer.Option(64, "--batch-size", min=1, help="Images per forward pass.")
LIMIT_OPT = typer.Option(
    None, "--limit", min=1, help="Only the first N images of the split (quick looks)."
)


DEVICE_OPT = typer.Option(
    "auto",
    "--device",
    callback=device_option,
    help="auto (CUDA when available), cpu, cuda, cuda:N or mps.",
)
CKPT_OPT = typer.Option("last", "--checkpoint", help="last, a step number, or a .pt path.")


@commands.command("export")
def export_cmd(
    run: Path = RUN_ARG,
    split: str = EXPORT_SPLIT_OPT,
    length_mode: str | None = MODE_OPT,
    data: Path | None = DATA_OPT,
    batch_size: int = BATCH_OPT,
    limit: int | None = LIMIT_OPT,
    device: str = DEVICE_OPT,
    checkpoint: str = CKPT_OPT,
    out: Path | None = typer.Option(
        None, "--out", help="Output file; default RUN/programs.parquet."
    ),
) -> None:
    """Encode a dataset split into programs: RUN/programs.parquet (one row per image)."""
    from strop.evaluation.export import export_programs

    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        path = export_programs(
            run,
            split=split,
            length_mode=length_mode,
            data=data,
            batch_size=batch_size,
            limit=limit,
            device=device,
            checkpoint=checkpoint,
            out=out,
        )
    typer.echo(f"wrote {path}")


@commands.command("eval")
def eval_cmd(
    run: Path = RUN_ARG,
    split: str = SPLIT_OPT,
    length_mode: str | None = MODE_OPT,
    data: Path | None = DATA_OPT,
    batch_size: int = BATCH_OPT,
    limit: int | None = LIMIT_OPT,
    device: str = DEVICE_OPT,
    checkpoint: str = CKPT_OPT,
    lpips: bool | None = typer.Option(
        None,
        "--lpips/--no-lpips",
        help="Score the pixel probe with LPIPS (AlexNet, v0.1). Default: when its weights are "
        "found (torch hub cache, installed lpips package); --lpips requires them.",
        show_default=False,
    ),
    lpips_backbone: Path | None = typer.Option(
        None,
        "--lpips-backbone",
        help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth); implies --lpips.",
    ),
    lpips_lin: Path | None = typer.Option(
        None,
        "--lpips-lin",
        help="LPIPS lin weights (the lpips package's weights/v0.1/alex.pth); implies --lpips.",
    ),
) -> None:
    """Alignment, codebook usage, pixel SSIM (and LPIPS), bits and length-vs-complexity: RUN/eval.json."""
    from strop.evaluation.evaluate import evaluate_run

    if lpips is False and (lpips_backbone or lpips_lin):
        fail("--no-lpips contradicts --lpips-backbone/--lpips-lin", usage=True)
    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = evaluate_run(
            run,
            split=split,
            length_mode=length_mode,
            data=data,
            batch_size=batch_size,
            limit=limit,
            device=device,
            checkpoint=checkpoint,
            lpips=lpips,
            lpips_backbone=lpips_backbone,
            lpips_lin=lpips_lin,
        )
    lv = result["length_vs_objects"]
    pixels = "  ".join(
        f"{name} {result[name]:.3f}" for name in ("ssim", "lpips") if result[name] is not None
    )
    typer.echo(
        f"cos {result['cos']:.4f}  r2 {result['r2']:.4f}  rmse {result['rmse']:.4f}  {pixels}  "
        f"CB% {result['cb_pct']:.1f}  Eff% {result['eff_pct']:.1f}  length {result['length_mean']:.2f}  "
        f"pearson {lv['pearson'] if lv['pearson'] is None else round(lv['pearson'], 3)}  -> {Path(run) / 'eval.json'}"
    )


@commands.command("analyze")
def analyze_cmd(
    run: Path = RUN_ARG,
    n_images: int = typer.Option(16, "--n-images", min=1, help="Images to analyse by erasure."),
    split: str = SPLIT_OPT,
    data: Path | None = DATA_OPT,
    n_random_pairs: int = typer.Option(
        64, "--random-pairs", min=1, help="Random active pairs per image."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random pair draw."),
    device: str = DEVICE_OPT,
    checkpoint: str = CKPT_OPT,
) -> None:
    """Counterfactual erasure, attribution vs object masks, pair synergy, code reuse: RUN/analysis/."""
    from strop.evaluation.analyze import analyze_run

    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = analyze_run(
            run,
            split=split,
            n_images=n_images,
            data=data,
            n_random_pairs=n_random_pairs,
            seed=seed,
            device=device,
            checkpoint=checkpoint,
        )
    typer.echo(f"analysed {result['n_images']} images -> {Path(run) / 'analysis'}")


@commands.command("report")
def report_cmd(
    experiment: Path = typer.Argument(
        ..., help="Experiment folder (its sub-runs) or a single run.", show_default=False
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder; default: the experiment folder."
    ),
) -> None:
    """report.md and a self-contained report.html comparing every sub-run."""
    from strop.evaluation.report import build_report

    with exit_on(failed=_WORK_ERRORS):
        md, html = build_report(experiment, out_dir=out)
    typer.echo(f"wrote {md} and {html}")
