"""`strop export`, `strop eval`, `strop sweep` (alias `strop eval --sweep`), `strop analyze`, `strop report`.

Torch and the model are imported inside the command bodies so `strop --help` stays fast.
Errors at the edge print one line: a bad `--length-mode` exits 2 (usage); a run folder, checkpoint, scenes file or dataset that cannot be used exits 1 (the work failed).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from strop.cli_app import Commands, exit_on, fail
from strop.cli_options import Arg, Flag, command, options_of
from strop.commands.model import CHECKPOINT_HELP, RunFolder
from strop.devices import device_option

commands = Commands()

#: Exit 1: the run folder, scenes, dataset or (added by `_model_errors`) checkpoint failed.
_WORK_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Exit 2: the command line is wrong (a `--length-mode` that does not parse). It is a
    ValueError too; `exit_on` tries the usage errors first. A ConfigError here comes from the
    run's own config.json, so it is a failure of the run folder (exit 1)."""
    from strop.model.length_modes import LengthModeError

    return (LengthModeError,)  # SweepLengthsError is one too


def _model_errors() -> tuple[type[BaseException], ...]:
    # Importing CheckpointError imports torch, which `strop report` does not need.
    from strop.model.weights import CheckpointError

    return (*_WORK_ERRORS, CheckpointError)


MODE_HELP = (
    "head (the length head), fixed (all L_max tokens), prefix:N (exactly N tokens), "
    "cap:N (the head's length, at most N), search:EPS (shortest prefix whose align error "
    "<= EPS) or quality:EPS (the eps-conditioned head, one pass; runs trained with "
    "model.quality_head=true). Default: fixed for runs trained fixed-length, else head."
)


class _LengthMode(BaseModel):
    length_mode: Annotated[str | None, Flag(show_default=False)] = Field(
        None, description=MODE_HELP
    )


class _Weights(RunFolder):
    """Which weights, on which device."""

    device: Annotated[str, Flag(callback=device_option)] = Field(
        "auto", description="auto (CUDA when available), cpu, cuda, cuda:N or mps."
    )
    checkpoint: Annotated[str, Flag()] = Field("last", description=CHECKPOINT_HELP)


class _Batches(BaseModel):
    batch_size: Annotated[int, Flag(min=1)] = Field(64, description="Images per forward pass.")
    limit: Annotated[int | None, Flag(min=1)] = Field(
        None, description="Only the first N images of the split (quick looks)."
    )


class _Split(BaseModel):
    """One split of the run's dataset (or another)."""

    split: Annotated[str, Flag()] = Field(
        "val", description="Dataset split to encode (train, val, test)."
    )
    data: Annotated[Path | None, Flag()] = Field(
        None, description="Dataset folder; default: data.path from the run's config.json."
    )


class ExportOptions(_Weights, _Batches, _LengthMode):
    """`strop export`'s options."""

    split: Annotated[str, Flag()] = Field(
        "val",
        description="Split(s) to encode, comma-separated (e.g. train,val): one file, rows tagged.",
    )
    data: Annotated[str | None, Flag()] = Field(
        None,
        description="Dataset folder, WebDataset tar shards (data/{split}-{0000..0099}.tar; "
        "{split} is each --split) or hf://owner/name; default: data.path from config.json.",
    )
    streaming: Annotated[bool, Flag()] = Field(
        False, description="Stream an hf://owner/name dataset instead of downloading it first."
    )
    out: Annotated[Path | None, Flag()] = Field(
        None, description="Output file; default RUN/programs.parquet."
    )
    replace: Annotated[bool, Flag()] = Field(
        False,
        description="Overwrite an output file even when that drops programs of other splits.",
    )
    shard_rows: Annotated[int, Flag(min=1)] = Field(
        100_000,
        description="More rows than this (or a torchrun launch) write a programs dataset: "
        "RUN/programs/ of parquet shards of this many rows + manifest.json, resumable.",
    )


def export_cmd(values: dict[str, Any]) -> None:
    """Encode a dataset split into programs: RUN/programs.parquet (one row per image).

    An existing file that holds other splits (the quickstart exports train,val) is kept
    unless --replace: export all its splits, or --out another file. Large exports write
    the sharded dataset form; rerun the same command after a kill to resume it. Under
    `torchrun --nproc_per_node N -m strop.cli export ...` each process writes its share.
    """
    from strop.evaluation.export import export_programs
    from strop.evaluation.programs_dataset import failed_images

    o = ExportOptions.model_validate(values)
    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        path = export_programs(o.run, **o.model_dump(exclude={"run"}))
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


commands.command("export")(command(export_cmd, ExportOptions))


class EncodingOptions(_Weights, _Split, _Batches):
    """What `strop eval` and `strop sweep` share: which images, which weights on which
    device, and whether LPIPS scores the pixel probe."""

    lpips: Annotated[bool | None, Flag("--lpips/--no-lpips", show_default=False)] = Field(
        None,
        description="Score the pixel probe with LPIPS (AlexNet, v0.1). Default: when its weights "
        "are found (torch hub cache, installed lpips package); --lpips requires them.",
    )


class SweepOptions(EncodingOptions):
    """`strop sweep`'s options: the encoding's and the grid's."""

    sweep_lengths: Annotated[str | None, Flag()] = Field(
        None, description="With --sweep: the grid of N, e.g. 1,2,4,8-12 (default L_min..L_max)."
    )
    sweep_eps: Annotated[float | None, Flag()] = Field(
        None,
        description="With --sweep: EPS of the search:EPS point (default: the head's mean align "
        "error).",
    )


class EvalOptions(SweepOptions, _LengthMode):
    """`strop eval`'s options: the sweep's, and those of the single operating point that
    `--sweep` (the alias of `strop sweep`) does not take."""

    quality_eps: Annotated[str | None, Flag()] = Field(
        None,
        description="EPS values of the quality_control block, comma-separated (runs trained "
        "with model.quality_head=true; default: 6 values inside the split's error range).",
    )
    lpips_backbone: Annotated[Path | None, Flag()] = Field(
        None, description="torchvision AlexNet weights (alexnet-owt-7be5be79.pth); implies --lpips."
    )
    lpips_lin: Annotated[Path | None, Flag()] = Field(
        None,
        description="LPIPS lin weights (the lpips package's weights/v0.1/alex.pth); implies "
        "--lpips.",
    )
    order_probe: Annotated[int | None, Flag(min=0)] = Field(
        None, description="Images the token-order probe permutes (0: skip) [default: 256]."
    )
    sweep: Annotated[bool, Flag()] = Field(
        False,
        description="Length-quality curves instead: every prefix length N (prefix:N) scored, "
        "with the head, fixed and search:EPS operating points -> RUN/sweep.json.",
    )


def _given(model: type[BaseModel], values: dict[str, Any], skip: Iterable[str]) -> list[str]:
    """The flags of `model`'s options that `values` sets (not None), less those in `skip`."""
    return [
        o.decls[0].split("/")[0]
        for o in options_of(model, exclude=skip)
        if values[o.name] is not None
    ]


def eval_cmd(values: dict[str, Any]) -> None:
    """Alignment, codebook usage, pixel SSIM (and LPIPS), bits and length-vs-complexity: RUN/eval.json."""
    from strop.evaluation.evaluate import evaluate_run

    o = EvalOptions.model_validate(values)
    if o.lpips is False and (o.lpips_backbone or o.lpips_lin):
        fail("--no-lpips contradicts --lpips-backbone/--lpips-lin", usage=True)
    if _given(SweepOptions, values, EncodingOptions.model_fields) and not o.sweep:
        fail("--sweep-lengths/--sweep-eps need --sweep", usage=True)
    if o.sweep:  # the alias of `strop sweep`
        # the sweep sets every length itself; say so rather than ignore what it does not take
        ignored = _given(EvalOptions, values, [*SweepOptions.model_fields, "sweep"])
        if ignored:
            fail(
                f"{', '.join(ignored)} do not apply with --sweep (it scores every prefix:N and "
                "the head, fixed and search:EPS points)",
                usage=True,
            )
        sweep_cmd({name: values[name] for name in SweepOptions.model_fields})
        return
    encoding = o.model_dump(include=set(EncodingOptions.model_fields) - {"run"})
    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = evaluate_run(
            o.run,
            **encoding,
            length_mode=o.length_mode,
            lpips_backbone=o.lpips_backbone,
            lpips_lin=o.lpips_lin,
            quality_eps=_eps_list(o.quality_eps),
            order_probe_images=256 if o.order_probe is None else o.order_probe,
        )
    for line in eval_lines(result, o.run):
        typer.echo(line)


commands.command("eval")(command(eval_cmd, EvalOptions))


def eval_lines(result: dict[str, Any], run: Path) -> list[str]:
    """What the terminal says of eval.json: the headline metrics, the order probe's verdict
    and the baselines."""
    lv = result["length_vs_objects"]
    pixels = "  ".join(
        f"{name} {result[name]:.3f}" for name in ("ssim", "lpips") if result[name] is not None
    )
    pearson = lv["pearson"] if lv["pearson"] is None else round(lv["pearson"], 3)
    lines = [
        f"cos {result['cos']:.4f}  r2 {result['r2']:.4f}  rmse {result['rmse']:.4f}  {pixels}  "
        f"CB% {result['cb_pct']:.1f}  Eff% {result['eff_pct']:.1f}  length "
        f"{result['length_mean']:.2f}  pearson {pearson}  -> {Path(run) / 'eval.json'}"
    ]
    if "order_probe" in result:
        lines.append(result["order_probe"]["verdict"])
    return lines + baseline_lines(result)


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
    from strop.model.length_modes import LengthModeError, parse_eps_values

    try:
        return parse_eps_values(text)
    except LengthModeError as exc:
        fail(exc, usage=True)


def sweep_cmd(values: dict[str, Any]) -> None:
    """Length-quality curves: every prefix length N (prefix:N) scored, with the head, fixed
    and search:EPS operating points -> RUN/sweep.json (`strop eval RUN --sweep` is the same)."""
    from strop.evaluation.sweep import SWEEP_FILE, sweep_run

    o = SweepOptions.model_validate(values)
    encoding = o.model_dump(include=set(EncodingOptions.model_fields) - {"run"})
    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = sweep_run(o.run, **encoding, lengths=o.sweep_lengths, search_eps=o.sweep_eps)
    for row in result["rows"]:
        typer.echo(f"N {row['n']:>4}  cos {row['cos']:.4f}  align error {row['align_error']:.4f}")
    for name, point in result["operating_points"].items():
        typer.echo(f"{name:>6}: length {point['length_mean']:.2f}  cos {point['cos']:.4f}")
    typer.echo(f"-> {Path(o.run) / SWEEP_FILE}")


commands.command("sweep")(command(sweep_cmd, SweepOptions))


class AnalyzeOptions(_Weights, _Split, _LengthMode):
    """`strop analyze`'s options."""

    n_images: Annotated[int, Flag(min=1)] = Field(16, description="Images to analyse by erasure.")
    n_random_pairs: Annotated[int, Flag("--random-pairs", min=1)] = Field(
        64, description="Random active pairs per image."
    )
    seed: Annotated[int, Flag()] = Field(0, description="Seed of the random pair draw.")


def analyze_cmd(values: dict[str, Any]) -> None:
    """Counterfactual erasure, attribution vs object masks, pair synergy, code reuse: RUN/analysis/."""
    from strop.evaluation.analyze import analyze_run

    o = AnalyzeOptions.model_validate(values)
    with exit_on(usage=_usage_errors(), failed=_model_errors()):
        result = analyze_run(o.run, **o.model_dump(exclude={"run"}))
    typer.echo(f"analysed {result['n_images']} images -> {Path(o.run) / 'analysis'}")
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


commands.command("analyze")(command(analyze_cmd, AnalyzeOptions))


class ReportOptions(BaseModel):
    """`strop report`'s options."""

    experiment: Annotated[Path, Arg(show_default=False)] = Field(
        description="Experiment folder (its sub-runs) or a single run."
    )
    out: Annotated[Path | None, Flag()] = Field(
        None, description="Output folder; default: the experiment folder."
    )


def report_cmd(values: dict[str, Any]) -> None:
    """report.md and a self-contained report.html comparing every sub-run."""
    from strop.evaluation.report import build_report

    o = ReportOptions.model_validate(values)
    with exit_on(failed=_WORK_ERRORS):
        md, html = build_report(o.experiment, out_dir=o.out)
    typer.echo(f"wrote {md} and {html}")


commands.command("report")(command(report_cmd, ReportOptions))
