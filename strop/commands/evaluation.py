"""`strop export`, `strop eval`, `strop analyze`, `strop report`.

Torch and the model are imported inside the command bodies so `strop --help` stays fast.
Errors at the edge print one line: a bad `--length-mode` exits 2 (usage); a run folder, checkpoint, scenes file or dataset that cannot be used exits 1 (the work failed).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

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

    return (LengthModeError,)  # SweepLengthsError is one too


def _model_errors() -> tuple[type[BaseException], ...]:
    # Importing CheckpointError imports torch, which `strop report` does not need.
    from strop.model.weights import CheckpointError

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
    help="head (the length head), fixed (all L_max tokens), prefix:N (exactly N tokens), "
    "cap:N (the head's length, at most N), search:EPS (shortest prefix whose align error "
    "<= EPS) or quality:EPS (the eps-conditioned head, one pass; runs trained with "
    "model.quality_head=true). Default: fixed for runs trained fixed-length, else head.",
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


class _Encoding(TypedDict):
    """The options `eval` and `eval --sweep` pass on unchanged (`evaluate_run`, `sweep_run`):
    which images, which weights on which device, and whether LPIPS scores the pixel probe.
    Gathered once, so the two paths cannot drift apart."""

    split: str
    data: Path | None
    batch_size: int
    limit: int | None
    device: str
    checkpoint: str
    lpips: bool | None


@commands.command("export")
def export_cmd(
    run: Path = RUN_ARG,
    split: str = EXPORT_SPLIT_OPT,
    length_mode: str | None = MODE_OPT,
    data: str | None = typer.Option(
        None,
        "--data",
        help="Dataset folder, WebDataset tar shards (data/{split}-{0000..0099}.tar; "
        "{split} is each --split) or hf://owner/name; default: data.path from config.json.",
    ),
    streaming: bool = typer.Option(
        False,
        "--streaming",
        help="Stream an hf://owner/name dataset instead of downloading it first.",
    ),
    batch_size: int = BATCH_OPT,
    limit: int | None = LIMIT_OPT,
    device: str = DEVICE_OPT,
    checkpoint: str = CKPT_OPT,
    out: Path | None = typer.Option(
        None, "--out", help="Output file; default RUN/programs.parquet."
    ),
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Overwrite an output file even when that drops programs of other splits.",
    ),
    shard_rows: int = typer.Option(
        100_000,
        "--shard-rows",
        min=1,
        help="More rows than this (or a torchrun launch) write a programs dataset: "
        "RUN/programs/ of parquet shards of this many rows + manifest.json, resumable.",
    ),
) -> None:
    """Encode a dataset split into programs: RUN/programs.parquet (one row per image).

    An existing file that holds other splits (the quickstart exports train,val) is kept
    unless --replace: export all its splits, or --out another file. Large exports write
    the sharded dataset form; rerun the same command after a kill to resume it. Under
    `torchrun --nproc_per_node N -m strop.cli export ...` each process writes its share.
    """
    from strop.evaluation.export import export_programs
    from strop.evaluation.programs_dataset import failed_images

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
            replace=replace,
            shard_rows=shard_rows,
            streaming=streaming,
        )
        failed = failed_images(path)
    typer.echo(f"wrote {path}")
    if failed:  # counted and listed, never silently dropped
        first = failed[0]
        typer.echo(
            f"{len(failed)} image{'s' * (len(failed) != 1)} failed to decode and have no program "
            "(listed under "
            f"failed_images in {path.name}; first {first['image_id']}: {first['reason']})",
            err=True,
        )


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
    sweep: bool = typer.Option(
        False,
        "--sweep",
        help="Length-quality curves instead: every prefix length N (prefix:N) scored, with "
        "the head, fixed and search:EPS operating points -> RUN/sweep.json.",
    ),
    sweep_lengths: str | None = typer.Option(
        None,
        "--sweep-lengths",
        help="With --sweep: the grid of N, e.g. 1,2,4,8-12 (default L_min..L_max).",
    ),
    sweep_eps: float | None = typer.Option(
        None,
        "--sweep-eps",
        help="With --sweep: EPS of the search:EPS point (default: the head's mean align error).",
    ),
    quality_eps: str | None = typer.Option(
        None,
        "--quality-eps",
        help="EPS values of the quality_control block, comma-separated (runs trained with "
        "model.quality_head=true; default: 6 values inside the split's error range).",
    ),
    order_probe: int | None = typer.Option(
        None,
        "--order-probe",
        min=0,
        help="Images the token-order probe permutes (0: skip) [default: 256].",
    ),
) -> None:
    """Alignment, codebook usage, pixel SSIM (and LPIPS), bits and length-vs-complexity: RUN/eval.json."""
    from strop.evaluation.evaluate import evaluate_run

    if lpips is False and (lpips_backbone or lpips_lin):
        fail("--no-lpips contradicts --lpips-backbone/--lpips-lin", usage=True)
    if (sweep_lengths is not None or sweep_eps is not None) and not sweep:
        fail("--sweep-lengths/--sweep-eps need --sweep", usage=True)
    ignored = [
        name
        for name, value in (
            ("--length-mode", length_mode),
            ("--quality-eps", quality_eps),
            ("--lpips-backbone", lpips_backbone),
            ("--lpips-lin", lpips_lin),
            ("--order-probe", order_probe),
        )
        if value is not None
    ]
    if sweep and ignored:  # the sweep sets every length itself; say so rather than ignore them
        fail(
            f"{', '.join(ignored)} do not apply with --sweep (it scores every prefix:N and the "
            "head, fixed and search:EPS points)",
            usage=True,
        )
    encoding = _Encoding(
        split=split,
        data=data,
        batch_size=batch_size,
        limit=limit,
        device=device,
        checkpoint=checkpoint,
        lpips=lpips,
    )
    if sweep:
        _sweep(run, encoding, sweep_lengths, sweep_eps)
        return
    eps_values = _eps_list(quality_eps)
    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = evaluate_run(
            run,
            **encoding,
            length_mode=length_mode,
            lpips_backbone=lpips_backbone,
            lpips_lin=lpips_lin,
            quality_eps=eps_values,
            order_probe_images=256 if order_probe is None else order_probe,
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
    if "order_probe" in result:
        typer.echo(result["order_probe"]["verdict"])
    for line in baseline_lines(result):
        typer.echo(line)


def baseline_lines(result: dict) -> list[str]:
    """What the terminal says of eval.json's baselines: the alignment's skill over the
    average teacher field, each scene probe beside length alone, and the collapse banner."""
    from strop.baselines import find_records

    lines = []
    if result.get("collapsed"):
        lines.append(f"warning: {result.get('collapse_banner') or 'collapsed'}")
    alignment = result.get("alignment") or {}
    if alignment.get("skill") is not None:
        lines.append(f"skill over the average teacher field {alignment['skill']:.3f}")
    for path, rec in find_records(result):
        if rec.get("ceiling") or rec.get("advantage") is None:
            continue
        lo_hi = rec.get("interval")
        ci = f" [{lo_hi[0]:+.3f}, {lo_hi[1]:+.3f}]" if lo_hi else ""
        lines.append(
            f"{path}: {rec['advantage']:+.3f}{ci} over {rec['baseline']} "
            f"({rec.get('verdict') or rec.get('note') or 'no verdict'})"
        )
    return lines


def _eps_list(text: str | None) -> list[float] | None:
    from strop.evaluation.export import LengthModeError, parse_eps_values

    try:
        return parse_eps_values(text)
    except LengthModeError as exc:
        fail(exc, usage=True)


def _sweep(run: Path, encoding: _Encoding, lengths: str | None, eps: float | None) -> None:
    from strop.evaluation.sweep import SWEEP_FILE, sweep_run

    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = sweep_run(run, **encoding, lengths=lengths, search_eps=eps)
    for row in result["rows"]:
        typer.echo(f"N {row['n']:>4}  cos {row['cos']:.4f}  align error {row['align_error']:.4f}")
    for name, point in result["operating_points"].items():
        typer.echo(f"{name:>6}: length {point['length_mean']:.2f}  cos {point['cos']:.4f}")
    typer.echo(f"-> {Path(run) / SWEEP_FILE}")


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
    length_mode: str | None = MODE_OPT,
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
            length_mode=length_mode,
        )
    typer.echo(f"analysed {result['n_images']} images -> {Path(run) / 'analysis'}")
    om = result["object_metrics"]
    if om["n_images"]:
        typer.echo(
            f"FG-ARI {om['fg_ari']:.3f} [{om['fg_ari_ci'][0]:.3f}, {om['fg_ari_ci'][1]:.3f}]  "
            f"mBO {om['mbo']:.3f} [{om['mbo_ci'][0]:.3f}, {om['mbo_ci'][1]:.3f}]  "
            f"(n={om['n_images']} images, {om['n_objects']} objects; masks {om['masks']})"
        )
        for metric, records in om.get("baselines", {}).items():
            for name, rec in records.items():
                verdict = rec["verdict"] or rec.get("note", "no verdict")
                base = rec["baseline_value"]
                shown = "undefined" if base is None else f"{base:.3f}"
                typer.echo(f"  {metric} vs {name} {shown}: {verdict}")
    for note in om.get("warnings", []):
        typer.echo(f"warning: {note}")


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
