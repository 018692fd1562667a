"""Report sections over the runs' own results: what `strop train/export/eval/analyze` wrote.

`overview` (one row per run), `alignment` (the paper's CLEVR Table 14 columns; LPIPS when
any run scored it), `fixed_vs_curriculum` (Table 15) when both kinds of run exist,
`complexity` (length vs scene complexity, Sec. 5.4, Fig. 7), `code_usage`, `analysis`
(structure analysis) and `training` (curves from metrics.jsonl). Each is a function of the
loaded runs returning one `Section`.

Design decisions
- A missing part becomes a note naming the command that produces it; unreadable files
  (`RunData.problems`) are listed as notes under the overview.
- Length vs object count comes from eval.json's `length_vs_objects` block; without it, it is
  recomputed from programs.parquet when the programs carry object counts.
- Code usage is recounted from programs.parquet (active-prefix tokens), not read from eval.json,
  so it needs only an export.
- Figures drawn here (`strop.evaluation.plots`) are written into the report's `figures/` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from strop import metrics
from strop.evaluation.plots import plot_length_vs_objects, plot_training_curves
from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import Figure, Section, Table
from strop.evaluation.report.formatting import fmt, fmt_ci, label, stats_table


def overview(runs: list[RunData], experiment: Path) -> Section:
    sec = Section(
        "Runs", "runs", text=[f"Experiment folder: {experiment}. Runs are listed in natural order."]
    )
    rows = []
    for run in runs:
        model = run.config.get("model") or {}
        last_step = max((r.get("step", 0) for r in run.metrics), default=None)
        rows.append(
            [
                run.name,
                fmt(run.k),
                run.teacher,
                fmt(model.get("preset")),
                fmt(model.get("l_max")),
                run.training_mode,
                fmt(last_step),
                fmt(len(run.programs) if run.programs else None),
            ]
        )
    sec.tables.append(
        Table(
            "runs",
            ["run", "K", "teacher", "preset", "L_max", "training", "last step", "programs"],
            rows,
        )
    )
    sec.notes += [p for run in runs for p in run.problems]
    return sec


def alignment(runs: list[RunData]) -> Section:
    sec = Section("Alignment of the interpreted field with the teacher", "alignment")
    with_lpips = any((r.eval or {}).get("lpips") is not None for r in runs)
    rows = []
    for run in runs:
        e = run.eval
        if e is None:
            sec.notes.append(f"{run.name}: no eval.json: run `strop eval {run.folder.path}`.")
            continue
        if with_lpips and e.get("lpips") is None:
            sec.notes.append(f"{run.name}: no LPIPS: {e.get('lpips_note') or 'not scored'}.")
        perceptual = [fmt(e.get("ssim"))] + ([fmt(e.get("lpips"))] if with_lpips else [])
        rows.append(
            [
                run.name,
                fmt(run.k),
                fmt(e.get("cos")),
                fmt(e.get("r2")),
                fmt(e.get("rmse")),
                *perceptual,
                fmt(e.get("cb_pct"), 1),
                fmt(e.get("eff_pct"), 1),
                fmt(e.get("length_mean"), 1),
                fmt(e.get("bits_per_image"), 0),
                fmt(e.get("compression_ratio"), 0),
                fmt(e.get("length_mode")),
            ]
        )
    if rows:
        probe = (
            "SSIM and LPIPS (v0.1, AlexNet; lower is closer) score the pixel probe"
            if with_lpips
            else "SSIM scores the pixel probe"
        )
        sec.text.append(
            "Cosine, R^2 and RMSE compare the interpreted field with the frozen teacher's patch features on "
            f"held-out images; {probe}; CB% is the share of codes used in active prefixes and "
            "Eff% the effective vocabulary exp(H) over K; compression is teacher features at fp16 over program bits."
        )
        sec.tables.append(
            Table(
                "alignment",
                [
                    "run",
                    "K",
                    "Cos",
                    "R^2",
                    "RMSE",
                    "SSIM",
                    *(["LPIPS"] if with_lpips else []),
                    "CB%",
                    "Eff%",
                    "mean length",
                    "bits/image",
                    "compression",
                    "length mode",
                ],
                rows,
            )
        )
    return sec


def fixed_vs_curriculum(runs: list[RunData]) -> Section:
    sec = Section("Fixed-length vs curriculum programs", "fixed-vs-curriculum")
    modes = {r.training_mode for r in runs}
    if not {"fixed", "curriculum"} <= modes:
        sec.notes.append(
            "no fixed-vs-curriculum comparison: it needs runs trained with curriculum.length_mode=fixed and with "
            "the adaptive curriculum (e.g. `strop train ... --set curriculum.length_mode=fixed`)."
        )
        return sec
    rows = []
    for run in sorted(
        (r for r in runs if r.training_mode in ("fixed", "curriculum")),
        key=lambda r: (r.k or 0, r.training_mode),
    ):
        e = run.eval or {}
        rows.append(
            [
                fmt(run.k),
                run.training_mode,
                run.name,
                fmt(e.get("cos")),
                fmt(e.get("r2")),
                fmt(e.get("cb_pct"), 1),
                fmt(e.get("length_mean"), 1),
            ]
        )
    sec.tables.append(
        Table("fixed_vs_curriculum", ["K", "mode", "run", "Cos", "R^2", "CB%", "mean length"], rows)
    )
    return sec


def _length_stats(run: RunData) -> dict[str, Any] | None:
    block = (run.eval or {}).get("length_vs_objects")
    if block:
        return block
    if run.programs is not None and np.any(run.programs.n_objects >= 0):
        return metrics.length_vs_objects(run.programs.lengths, run.programs.n_objects)
    return None


def complexity(runs: list[RunData], fig_dir: Path) -> Section:
    sec = Section("Program length vs scene complexity", "length-vs-complexity")
    rows, per_count = [], {}
    for run in runs:
        stats = _length_stats(run)
        if stats is None:
            sec.notes.append(
                f"{run.name}: no object counts: export programs with scenes (`strop export {run.folder.path}`)."
            )
            continue
        lengths = run.programs.lengths if run.programs is not None else None
        e = run.eval or {}
        lo = e.get(
            "length_min", int(lengths.min()) if lengths is not None and lengths.size else None
        )
        hi = e.get(
            "length_max", int(lengths.max()) if lengths is not None and lengths.size else None
        )
        mean = e.get(
            "length_mean", float(lengths.mean()) if lengths is not None and lengths.size else None
        )
        rows.append(
            [
                run.name,
                fmt(run.k),
                fmt(stats.get("n")),
                fmt_ci(stats.get("pearson"), stats.get("pearson_ci")),
                fmt_ci(stats.get("spearman"), stats.get("spearman_ci")),
                fmt(lo),
                fmt(mean, 1),
                fmt(hi),
            ]
        )
        per_count[run.name] = stats.get("mean_length_by_objects") or {}
        if stats.get("note"):
            sec.notes.append(f"{run.name}: {stats['note']}")
    if rows:
        sec.text.append(
            "Correlation between a program's active length and its scene's object count, with 95% "
            "confidence intervals (Pearson: Fisher z; Spearman: percentile bootstrap unless noted)."
        )
        sec.tables.append(
            Table(
                "length_vs_objects",
                [
                    "run",
                    "K",
                    "n",
                    "Pearson [95% CI]",
                    "Spearman [95% CI]",
                    "min length",
                    "mean length",
                    "max length",
                ],
                rows,
            )
        )
        counts = sorted({int(c) for d in per_count.values() for c in d})
        if counts:
            sec.tables.append(
                Table(
                    "mean_length_by_objects",
                    ["run"] + [f"{c} obj" for c in counts],
                    [
                        [name] + [fmt(d.get(str(c)), 1) for c in counts]
                        for name, d in per_count.items()
                    ],
                    caption="Mean program length per object count",
                )
            )
    series = [
        (label(r), r.programs.lengths, r.programs.n_objects) for r in runs if r.programs is not None
    ]
    fig = plot_length_vs_objects(series, fig_dir / "length_vs_objects.png") if series else None
    if fig:
        sec.figures.append(
            Figure(
                fig,
                "Program length against object count over every exported program (all splits in "
                "programs.parquet; the table above is the eval split), one panel per run "
                "(jittered; red: mean).",
            )
        )
    return sec


def code_usage(runs: list[RunData]) -> Section:
    sec = Section("Code usage", "code-usage")
    rows = []
    for run in runs:
        if run.programs is None or run.k is None:
            sec.notes.append(
                f"{run.name}: no programs.parquet: run `strop export {run.folder.path}`."
            )
            continue
        counts = metrics.code_counts(run.programs.codes, run.k)
        usage, reuse = metrics.codebook_usage(counts), metrics.code_reuse_stats(counts)
        purity = ((run.analysis or {}).get("code_reuse") or {}).get("purity_nmi")
        rows.append(
            [
                run.name,
                fmt(run.k),
                fmt(reuse["active_codes"]),
                fmt(usage["cb_pct"], 1),
                fmt(reuse["effective_vocab"], 1),
                fmt(usage["eff_pct"], 1),
                fmt(reuse["entropy_bits"], 2),
                fmt(reuse["top10_share"]),
                fmt(reuse["herfindahl"], 4),
                fmt(purity),
            ]
        )
    if rows:
        sec.text.append(
            "Counted over active-prefix tokens of the exported split. Concentration: share of tokens "
            "taken by the top 10% of used codes, and the Herfindahl index; purity: NMI between a "
            "token's code and the attributes of the object it is attributed to (from `strop analyze`)."
        )
        sec.tables.append(
            Table(
                "code_usage",
                [
                    "run",
                    "K",
                    "active codes",
                    "CB%",
                    "eff. vocab",
                    "Eff%",
                    "entropy (bits)",
                    "top-10% share",
                    "Herfindahl",
                    "purity (NMI)",
                ],
                rows,
            )
        )
    return sec


def analysis(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("Structure analysis (counterfactual erasure)", "analysis")
    table = stats_table(
        "analysis",
        runs,
        lambda r: {k: v for k, v in (r.analysis or {}).items() if k != "contingency"},
    )
    if table:
        sec.tables.append(table)
    for run in runs:
        if run.analysis is None:
            sec.notes.append(f"{run.name}: no analysis: run `strop analyze {run.folder.path}`.")
        for png in run.figures.get("analysis", []):
            sec.figures.append(Figure(png, f"{run.name}: {png.stem.replace('_', ' ')}"))
    return sec


def training(runs: list[RunData], fig_dir: Path) -> Section:
    sec = Section("Training curves", "training")
    for run in runs:
        if not run.metrics:
            sec.notes.append(f"{run.name}: no metrics.jsonl (training log).")
    fig = plot_training_curves(
        [(label(r), r.metrics) for r in runs], fig_dir / "training_curves.png"
    )
    if fig:
        sec.figures.append(
            Figure(
                fig, "Training loss, mean program length and validation cosine from metrics.jsonl."
            )
        )
    return sec
