"""Experiment report: `report.md` and a self-contained `report.html` over every sub-run.

`build_report(EXPERIMENT)` compares the runs of one experiment (e.g. `runs/clevr/k32`,
`k64`, `k128`): alignment (the paper's CLEVR Table 14 columns), fixed vs curriculum
(Table 15) when both kinds of run exist, length vs scene complexity (Sec. 5.4, Fig. 7), code
usage, structure analysis, the grammar summary and the LLM decoding table (Appendix G)
beside its LLM-free baselines, plus figures.

The package, one idea per module:
- `collect`: what each run folder offers, read from files alone (`RunData`, `load_run`).
- `formatting`: numbers to cells, and generic tables for other tools' summaries.
- `document`: the intermediate, sections of paragraphs, notes, tables and figures.
- `results`: sections over the runs' own results (overview, alignment, fixed vs curriculum,
  complexity, code usage, structure analysis, training curves).
- `downstream`: sections over what other tools wrote (grammar, LLM decoding).
- `length_quality`: length-quality curves (sweep.json) and quality:EPS calibration.
- `meaning`: what the programs mean (order probe, FG-ARI/mBO, questions over codes).
- `verdicts`: every headline beside its baseline with a verdict per K (the comparison
  records of `strop.baselines`, found in every file), and the collapse banner.
- `checks`: what is read, checked (bad values left out with a note naming them).
- `render`: Markdown and HTML from the sections.

Design decisions
- Reads files only: no torch, no checkpoint, so a report can be rebuilt wherever the run
  folders are copied (see `collect`).
- One intermediate rendered twice (see `render`): Markdown linking figures, HTML embedding
  them.
- A missing or unreadable part becomes a note naming the command that produces it; the
  report fails only when the folder holds no run at all.
- Figures drawn for the report go to `OUT/figures/`. The report's files are one unit
  (`strop.output_unit`): drawn and written aside, then moved in together, so a report cut
  off midway never links figures of another build; `OUT` is checked writable first.
"""

from __future__ import annotations

import os
from pathlib import Path

from strop import __version__
from strop.atomic import atomic_write_text
from strop.evaluation.report import downstream, meaning, results, verdicts
from strop.evaluation.report.collect import RunData, load_run
from strop.evaluation.report.document import Figure, Section, Table
from strop.evaluation.report.downstream import BASELINES
from strop.evaluation.report.formatting import DASH, flatten_stats, fmt, fmt_ci
from strop.evaluation.report.length_quality import length_quality
from strop.evaluation.report.render import inline_code, render_html, render_markdown
from strop.output_unit import OutputUnit
from strop.runs import RunFolderError, discover_runs

__all__ = [
    "BASELINES",
    "DASH",
    "Figure",
    "RunData",
    "Section",
    "Table",
    "build_report",
    "flatten_stats",
    "fmt",
    "fmt_ci",
    "inline_code",
    "load_run",
    "render_html",
    "render_markdown",
]


#: The report's files, one unit (`strop.output_unit`): written aside and moved in together.
UNIT = "report"
REPORT_FILES = (
    "report.md",
    "report.html",
    "figures/length_vs_objects.png",
    "figures/training_curves.png",
)


def printable(text: str) -> str:
    """Text with the non-UTF-8 bytes of file names (surrogates) as `\\xNN` escapes: one run
    folder with such a name used to make the whole report unwritable."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def build_report(
    experiment_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """Write `report.md`, `report.html` and `figures/*.png` into `out_dir` (default: the experiment)."""
    experiment = Path(experiment_dir)
    folders = discover_runs(experiment)
    if not folders:
        raise RunFolderError(
            f"{experiment}: no run folders (with config.json or programs.parquet) found"
        )
    out = Path(out_dir) if out_dir is not None else experiment
    unit = OutputUnit(out, UNIT, REPORT_FILES, "strop report")
    unit.open()
    with unit.writing() as staging:
        fig_dir = staging / "figures"
        runs = [load_run(f) for f in folders]
        for run in runs:
            verdicts.check_collapsed(run)
        banners = [b for run in runs if (b := verdicts.collapsed(run))]
        banners += [b for run in runs for b in verdicts.stale(run)]
        sections = [
            results.overview(runs, experiment),
            verdicts.verdicts(runs),
            results.alignment(runs),
            results.fixed_vs_curriculum(runs),
            results.complexity(runs, fig_dir),
            results.code_usage(runs),
            length_quality(runs, fig_dir),
            results.analysis(runs, experiment),
            results.training(runs, fig_dir),
            downstream.grammar(runs, experiment),
            downstream.llm(runs, experiment),
            meaning.order(runs),
            meaning.objects(runs),
            meaning.qa(runs, experiment),
        ]
        title = f"STROP report: {experiment.name}"
        ks = ", ".join(str(k) for k in sorted({r.k for r in runs if r.k is not None})) or "unknown"
        subtitle = f"{len(runs)} run(s), codebook sizes K = {ks}. Generated by strop {__version__}."
        html = render_html(title, subtitle, sections, banners)
        atomic_write_text(staging / "report.html", printable(html))
        for figure in (f for sec in sections for f in sec.figures):  # where it will be
            if figure.path.is_relative_to(staging):
                figure.path = out / figure.path.relative_to(staging)
        md = render_markdown(title, subtitle, sections, out, banners)
        atomic_write_text(staging / "report.md", printable(md))
    return out / "report.md", out / "report.html"
