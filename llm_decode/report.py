"""`strop-llm report`: the paper's decoding table (Appendix G, Table 16) across models and K.

Design decisions
- The table is rebuilt from every `RUN/llm/<model>/summary.json` under the experiment, so it
  never drifts from the results; rows sort by model, then K, baselines first.
- Parse failures print as `fails / n` like the paper; a run with missing answers says so.
- Each protocol has its own folder (`llm_decode.results.claim_folder`), so one model can have
  several rows; the `n`, `Shots`, `Thinking` and `Temperature` columns tell them apart.
- Markdown goes to `EXPERIMENT/llm_report.md` (atomic write); the same rows print as a rich
  table.
- Every row says how it was scored (`Scoring`: matching / position error, and the naive
  baseline's definition), read from its summary; a summary written before these options
  existed was scored by position matching and per-coordinate errors, and says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

from llm_decode.qa.report import collect_qa, markdown_table, qa_markdown, qa_table
from llm_decode.results import SUMMARY_FILE
from strop.atomic import atomic_write_text
from strop.runs import RunFolderError, discover_runs

REPORT_FILE = "llm_report.md"
COLUMNS = (
    "Model",
    "K",
    "n",
    "Shots",
    "Thinking",
    "Temperature",
    "Parse fails",
    "Count err",
    "Attr acc",
    "Pos MSE",
    "Pos MAE",
    "AP@inf",
    "AP@0.5",
    "Scoring",
)
#: What summaries without a `scoring` record were computed with (the code before the options).
_LEGACY_SCORING = {"matching": "position", "position_error": "coordinate"}
_BASELINES = ("naive", "knn")


def collect_summaries(experiment: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every decoding summary under the experiment, with `run` and `folder` added."""
    found = []
    for run in discover_runs(experiment):
        if not run.llm_dir.is_dir():
            continue
        for path in sorted(run.llm_dir.glob(f"*/{SUMMARY_FILE}")):
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise RunFolderError(
                    f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
                ) from None
            summary.setdefault("k", run.codebook_size)
            found.append({**summary, "run": run.name, "folder": path.parent.name})
    return found


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    def order(s: dict[str, Any]) -> tuple:
        return (s.get("backend") not in _BASELINES, s["folder"], s.get("k") or 0)

    rows = []
    for s in sorted(summaries, key=order):
        fails = f"{s['parse_fails']} / {s['n']}" if s.get("backend") not in _BASELINES else "N/A"
        if s.get("missing"):
            fails += f" ({s['missing']} missing)"
        ap = s.get("ap") or {}
        protocol = s.get("protocol") or {}
        think = protocol.get("think")
        llm = s.get("backend") not in _BASELINES
        rows.append(
            [
                s["folder"],
                str(s.get("k", "?")),
                str(s.get("n", "?")),
                str(protocol.get("shots", "?")),
                ("on" if think else "off") if llm and think is not None else "-",
                _temperature(protocol) if llm else "-",
                fails,
                _num(s.get("count_err"), 2),
                _num(s.get("attr_acc"), 3),
                _num(s.get("pos_mse"), 2),
                _num(s.get("pos_mae"), 2),
                _num(ap.get("inf"), 3),
                _num(ap.get("0.5"), 3),
                scoring_label(s),
            ]
        )
    return rows


def _temperature(protocol: dict[str, Any]) -> str:
    """`0` or the card's sampling, e.g. `0.7 (top_p 0.8, top_k 20)`."""
    sampling = dict(protocol.get("sampling") or {})
    temperature = sampling.pop("temperature", protocol.get("temperature"))
    if temperature is None:
        return "?"
    extra = ", ".join(f"{k} {v:g}" for k, v in sampling.items() if isinstance(v, int | float))
    return f"{temperature:g}" + (f" ({extra})" if extra else "")


def scoring_label(summary: dict[str, Any]) -> str:
    """`matching / position error`, plus `naive=<definition>` for the naive baseline."""
    scoring = summary.get("scoring") or _LEGACY_SCORING
    label = f"{scoring.get('matching', '?')} / {scoring.get('position_error', '?')}"
    label += f" / {scoring.get('attr_accuracy', 'matched')}"  # before the option: matched
    if "scoring" not in summary:
        label += " (before options)"
    if summary.get("backend") == "naive":
        label += f"; naive={summary.get('naive_definition') or 'modal'}"
    return label


def render_markdown(rows: list[list[str]], experiment: Path) -> str:
    lines = [
        f"# LLM scene decoding: {experiment}",
        "",
        *markdown_table(list(COLUMNS), rows),
        "",
        "Count err: mean |predicted - true| objects; attribute accuracy and position errors over "
        "Hungarian-matched objects; AP: CLEVR set prediction at the given (x, y) distance. "
        "Scoring: how objects were matched (attributes, joint, position or index) and how "
        "position errors were taken (mixed: MSE per coordinate, MAE Euclidean; coordinate; "
        "euclidean) and attribute accuracy (over true objects, matched pairs, or histograms); "
        "naive: the baseline's average scene (sampled, proportional or modal). "
        "See llm_decode/scoring.py and docs/TABLE16_CALIBRATION.md.",
        "",
    ]
    return "\n".join(lines)


def build_report(experiment: str | os.PathLike[str]) -> tuple[Path, Group]:
    """Write `llm_report.md` into the experiment folder; return its path and the rich tables
    (decoding, and questions over codes when `strop-llm qa` has run)."""
    experiment = Path(experiment)
    summaries = collect_summaries(experiment)
    qa = collect_qa(experiment)
    if not summaries and not qa:
        raise RunFolderError(
            f"{experiment}: no llm/<model>/{SUMMARY_FILE} found; run strop-llm decode first"
        )
    rows = table_rows(summaries)
    path = experiment / REPORT_FILE
    atomic_write_text(path, render_markdown(rows, experiment) + qa_markdown(qa))
    table = Table(title=f"LLM scene decoding ({experiment})")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "Model" else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return path, Group(table, *([qa_table(qa, experiment)] if qa else []))
