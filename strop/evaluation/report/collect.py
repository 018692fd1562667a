"""Collecting what one run folder offers the report, from files alone.

Design decisions
- Reads files only (config.json, eval.json, metrics.jsonl, programs.parquet,
  analysis/analysis.json and figures, grammar/summary.json and figures,
  llm/<model>/summary.json): no torch, and no checkpoint is loaded (`checkpoints/last.pt`
  is only hashed, to mark results of other weights "stale"), so a report can be rebuilt
  wherever the run folders are copied.
- An unreadable file is recorded in `RunData.problems` (shown as notes under "Runs"), never
  raised; a readable one is checked (`checks`): a value that cannot be what its field says
  is left out with a problem naming it; a missing one simply leaves its field empty, and the section that needs it says
  which command produces it.
- A tool's output folder left incomplete (`strop.output_unit`: `analysis/`, `grammar/`) is
  a problem, and none of its files is shown: they may mix two results.
- Grammar figures are ordered with the rank-frequency plot first: it is the one the report
  is meant to show.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strop.evaluation.report.checks import check_eval, check_k, qa_problem
from strop.evaluation.report.document import DASH
from strop.output_unit import require_complete
from strop.provenance import stale_reason
from strop.runs import Programs, RunFolder, RunFolderError, read_json, read_jsonl


@dataclass
class RunData:
    """Everything one run folder offers the report; `problems` lists unreadable files."""

    folder: RunFolder
    config: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    programs: Programs | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    analysis: dict[str, Any] | None = None
    grammar: dict[str, Any] | None = None
    llm: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: `strop-llm qa` summaries by model folder (llm/qa/<model>/summary.json), checked
    qa: dict[str, dict[str, Any]] = field(default_factory=dict)
    llm_scores: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per-image `scores` of each decode's answered rows (llm/<model>/results.jsonl)."""
    figures: dict[str, list[Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: derived files of weights the run no longer holds (`strop.provenance.stale_reason`)
    stale: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def k(self) -> int | None:
        return self.folder.codebook_size

    @property
    def training_mode(self) -> str:
        mode = (self.config.get("curriculum") or {}).get("length_mode")
        return "fixed" if mode == "fixed" else ("curriculum" if mode else DASH)

    @property
    def teacher(self) -> str:
        return str(
            (self.eval or {}).get("teacher")
            or (self.config.get("model") or {}).get("teacher")
            or DASH
        )


def complete(folder: Path, unit: str, attempt: Callable[[str, Callable[[], Any]], Any]) -> bool:
    """Whether `folder`'s output unit is whole; an incomplete one is recorded as a problem."""

    def check() -> bool:
        require_complete(folder, unit)
        return True

    return attempt(f"{folder.name}/", check) is True


def load_run(folder: RunFolder) -> RunData:
    """Read what exists; an unreadable file is recorded in `problems`, not raised."""
    data = RunData(folder)

    def attempt(what: str, fn):
        try:
            return fn()
        except (RunFolderError, OSError, ValueError) as exc:
            data.problems.append(f"{folder.name}/{what}: {exc}")
            return None

    if folder.config_path.is_file():
        data.config = attempt("config.json", folder.read_config) or {}
    if folder.eval_path.is_file():
        data.eval = attempt("eval.json", folder.read_eval)
        if data.eval is not None:
            check_eval(data.eval, data.k, f"{folder.name}/eval.json", data.problems)
    if folder.programs_path.is_file():
        data.programs = attempt("programs.parquet", folder.read_programs)
    data.metrics = attempt("metrics.jsonl", folder.read_metrics) or []
    analysis_dir = folder.path / "analysis"
    analysis_whole = complete(analysis_dir, "analyze", attempt)
    if analysis_whole and (analysis_dir / "analysis.json").is_file():
        data.analysis = attempt(
            "analysis/analysis.json", lambda: read_json(analysis_dir / "analysis.json")
        )
    grammar_whole = complete(folder.grammar_dir, "mine", attempt)
    if grammar_whole and (folder.grammar_dir / "summary.json").is_file():
        data.grammar = attempt(
            "grammar/summary.json", lambda: read_json(folder.grammar_dir / "summary.json")
        )
    if folder.llm_dir.is_dir():
        for sub in sorted(p for p in folder.llm_dir.iterdir() if (p / "summary.json").is_file()):
            summary = attempt(
                f"llm/{sub.name}/summary.json", lambda s=sub: read_json(s / "summary.json")
            )
            if summary is not None:
                check_k(
                    summary, data.k, f"{folder.name}/llm/{sub.name}/summary.json", data.problems
                )
                data.llm[sub.name] = summary
                rows = attempt(
                    f"llm/{sub.name}/results.jsonl",
                    lambda s=sub: read_jsonl(s / "results.jsonl"),
                )
                data.llm_scores[sub.name] = [
                    r["scores"] for r in rows or [] if isinstance(r.get("scores"), dict)
                ]
    data.qa = _qa_summaries(folder, data.k, attempt, data.problems)
    data.stale = stale_files(data)
    data.figures["analysis"] = (
        sorted((analysis_dir / "figures").glob("*.png")) if analysis_whole else []
    )
    grammar_pngs = (
        sorted(
            p
            for p in folder.grammar_dir.rglob("*.png")
            # not what a cut-off writer left in its hidden staging folder
            if not any(part.startswith(".") for part in p.relative_to(folder.grammar_dir).parts)
        )
        if grammar_whole and folder.grammar_dir.is_dir()
        else []
    )
    # the rank-frequency plot first: it is the one the report is meant to show
    data.figures["grammar"] = sorted(grammar_pngs, key=lambda p: ("rank" not in p.name, p.name))
    return data


def stale_files(data: RunData) -> list[str]:
    """One line per derived file whose recorded weights are not the ones the run holds now
    (trained on since, or written before weights were recorded): the report marks them."""
    folder = data.folder
    derived: list[tuple[str, Any]] = []
    if data.eval is not None:
        derived.append(("eval.json", data.eval.get("weights")))
    sweep = folder.path / "sweep.json"
    if sweep.is_file():
        try:
            derived.append(("sweep.json", read_json(sweep).get("weights")))
        except RunFolderError:
            pass  # the length-control section names what is wrong with it
    if data.programs is not None:
        derived.append(("programs.parquet", data.programs.meta.get("weights")))
    if data.analysis is not None:
        derived.append(("analysis/analysis.json", data.analysis.get("weights")))
    derived += [(f"llm/{m}/summary.json", s.get("weights")) for m, s in data.llm.items()]
    derived += [(f"llm/qa/{m}/summary.json", s.get("weights")) for m, s in data.qa.items()]
    try:
        return [r for what, w in derived if (r := stale_reason(w, folder.path, what))]
    except OSError as exc:  # the checkpoint cannot be read: say so rather than guess
        return [f"the run's checkpoint cannot be read to compare weights ({exc.strerror})"]


def _qa_summaries(
    folder: RunFolder,
    k: int | None,
    attempt: Callable[[str, Callable[[], Any]], Any],
    problems: list[str],
) -> dict[str, dict[str, Any]]:
    """`strop-llm qa` summaries by model folder; one that cannot be read or shown is a
    problem naming the file and why (`checks.qa_problem`), never skipped silently."""
    qa_dir = folder.llm_dir / "qa"
    out: dict[str, dict[str, Any]] = {}
    if not qa_dir.is_dir():
        return out
    for sub in sorted(p for p in qa_dir.iterdir() if (p / "summary.json").is_file()):
        where = f"llm/qa/{sub.name}/summary.json"
        path = sub / "summary.json"
        summary = attempt(where, functools.partial(read_json, path))
        if summary is None:
            continue
        bad = qa_problem(summary, k)
        if bad:
            problems.append(f"{folder.name}/{where}: skipped: {bad}")
            continue
        out[sub.name] = summary
    return out
