"""The report's "Length control" section (its title and anchor as the report has always shown
them): length-quality curves (sweep.json) and the calibration of quality:EPS.

Reads `RUN/sweep.json` (`strop eval RUN --sweep`) and eval.json's `quality_control` block
(runs trained with `model.quality_head=true`) straight from each run folder.

Design decisions
- Its own section and module (not a column of the alignment table): the curves are a view
  of a whole run at every length, drawn on one figure with the runs side by side in K order
  (K = 32 / 64 / 128), each with its head, fixed and search:EPS operating points.
- Calibration: one plot of requested vs achieved EPS over every conditioned run, and a table
  with the head's and the search's mean length and error per EPS and the time ratio.
- Without either file the section says which command writes it, like the rest of the report.
- Both are checked before they are drawn (`SweepFile`, `QualityBlock`): a field of the wrong
  type becomes a note naming the file and field, and the rest of the report is still written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

from strop.errors import validation_line
from strop.evaluation.length_plots import plot_calibration, plot_length_curves
from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import Figure, Section, Table
from strop.evaluation.report.formatting import fmt, label
from strop.runs import RunFolderError, read_json

SWEEP_FILE = "sweep.json"  # strop.evaluation.sweep.SWEEP_FILE; that module imports torch


Number = StrictFloat | StrictInt | None
#: a length, a bit count: never below 0 (a negative mean length is a broken file, not a value)
NonNegative = Annotated[StrictFloat | StrictInt, Field(ge=0)] | None


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class SweepRow(_Loose):
    n: StrictInt
    cos: Number = None
    count_probe_r2: Number = None


class OperatingPoint(_Loose):
    length_mode: StrictStr | None = None
    length_mean: NonNegative = None
    bits_per_image: NonNegative = None
    cos: Number = None
    r2: Number = None
    ssim: Number = None


class SweepFile(_Loose):
    """What the report reads of sweep.json (checked: a hand-edited or foreign file is a note
    naming the field, not a traceback that loses the whole report)."""

    k: StrictInt | None = None
    rows: list[SweepRow] = Field(default_factory=list)
    operating_points: dict[str, OperatingPoint] = Field(default_factory=dict)


class QualityRow(_Loose):
    eps: StrictFloat | StrictInt
    quality_error_mean: StrictFloat | StrictInt
    quality_length_mean: NonNegative = None
    search_error_mean: StrictFloat | StrictInt
    search_length_mean: NonNegative = None


class QualityBlock(_Loose):
    rows: list[QualityRow] = Field(default_factory=list)


def _checked(model: type[_Loose], data: Any, where: str, sec: Section) -> dict[str, Any] | None:
    """`data` as `model` validates it (back to plain JSON), or None with a note naming the field."""
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        sec.notes.append(f"{validation_line(exc, f'{where}:', got=True)}; skipped")
        return None


def _sweep(run: RunData, sec: Section) -> dict[str, Any] | None:
    path = run.folder.path / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (RunFolderError, OSError, ValueError) as exc:
        sec.notes.append(f"{run.name}/{SWEEP_FILE}: {exc}")
        return None
    checked = _checked(SweepFile, data, f"{run.name}/{SWEEP_FILE}", sec)
    if checked is not None and checked.get("k") is not None and run.k is not None:
        if checked["k"] != run.k:  # another run's curves: say so, print the run's own K
            sec.notes.append(
                f"{run.name}/{SWEEP_FILE}: field k: {checked['k']} but the run's K is {run.k}: "
                "skipped (another run's sweep?)"
            )
            return None
    return checked


def length_quality(runs: list[RunData], fig_dir: Path) -> Section:
    sec = Section("Length control: length-quality curves and quality targets", "length-control")
    ordered = sorted(runs, key=lambda r: (r.k is None, r.k or 0, r.name))
    sweeps = [(run, s) for run in ordered if (s := _sweep(run, sec)) is not None]
    if sweeps:
        _curves(sec, sweeps, fig_dir)
    else:
        sec.notes.append(
            "no length-quality curves: run `strop eval RUN --sweep` on each run (writes RUN/sweep.json)."
        )
    blocks = [
        (run, checked)
        for run in ordered
        if (block := (run.eval or {}).get("quality_control"))
        and (checked := _checked(QualityBlock, block, f"{run.name}/eval.json quality_control", sec))
    ]
    if blocks:
        _calibration(sec, blocks, fig_dir)
    return sec


def _curves(sec: Section, sweeps: list[tuple[RunData, dict[str, Any]]], fig_dir: Path) -> None:
    first = sweeps[0][1]
    sec.text.append(
        "Every prefix length N is scored on the held-out split (`--length-mode prefix:N`): "
        "cosine to the teacher, with the operating points of the length head (star), all "
        "L_max tokens (square) and search:EPS (triangle, EPS = the head's mean alignment error "
        "unless `--sweep-eps` set it) at their mean lengths. Count probe: "
        f"{first.get('count_probe', 'see sweep.json')}."
    )
    figure = plot_length_curves(
        [(label(run), s) for run, s in sweeps], fig_dir / "length_quality.png"
    )
    if figure is not None:
        sec.figures.append(Figure(figure, "Length-quality curves per codebook size (cos vs N)."))
    rows = []
    for run, sweep in sweeps:
        for point in (sweep.get("operating_points") or {}).values():
            rows.append(
                [
                    run.name,
                    fmt(sweep.get("k")),
                    fmt(point.get("length_mode")),
                    fmt(point.get("length_mean"), 2),
                    fmt(point.get("bits_per_image"), 0),
                    fmt(point.get("cos")),
                    fmt(point.get("r2")),
                    fmt(point.get("ssim")),
                ]
            )
    sec.tables.append(
        Table(
            "operating-points",
            ["run", "K", "length mode", "mean length", "bits/image", "Cos", "R^2", "SSIM"],
            rows,
            caption="Operating points on the curves (from sweep.json).",
        )
    )


def _calibration(sec: Section, blocks: list[tuple[RunData, dict[str, Any]]], fig_dir: Path) -> None:
    sec.text.append(
        "quality:EPS asks the eps-conditioned length head for the length that reaches alignment "
        "error EPS in one pass (the head predicts each image's error at every length and takes "
        "the shortest under EPS); search:EPS finds the shortest such prefix by interpreting every "
        "length. Against the requested EPS on the evaluated split: the achieved mean error, the "
        "share of images whose error is at most EPS (for the search, the most any length gives) "
        "and the mean length:"
    )
    figure = plot_calibration(
        [(label(run), b) for run, b in blocks], fig_dir / "quality_calibration.png"
    )
    if figure is not None:
        sec.figures.append(
            Figure(
                figure,
                "Calibration of quality:EPS against search:EPS: achieved error, share "
                "of images reaching EPS, mean length.",
            )
        )
    rows = []
    for run, block in blocks:
        for r in block["rows"]:
            rows.append(
                [
                    run.name,
                    fmt(r["eps"], 4),
                    fmt(r["quality_error_mean"], 4),
                    fmt(r.get("quality_reached"), 2),
                    fmt(r["quality_length_mean"], 2),
                    fmt(r["search_error_mean"], 4),
                    fmt(r.get("search_reached"), 2),
                    fmt(r["search_length_mean"], 2),
                ]
            )
        sec.notes.append(
            f"{run.name}: Spearman(requested, achieved) {fmt(block.get('spearman_requested_vs_achieved'))}; "
            f"search:EPS takes {fmt(block.get('search_over_quality_time'), 1)}x the time of quality:EPS per image "
            f"({block.get('search_passes')} interpreter passes vs {block.get('quality_passes')}; "
            f"{block.get('timing', '')})."
        )
    sec.tables.append(
        Table(
            "quality-control",
            [
                "run",
                "EPS",
                "quality: error",
                "quality: share <= EPS",
                "quality: length",
                "search: error",
                "search: share <= EPS",
                "search: length",
            ],
            rows,
        )
    )
