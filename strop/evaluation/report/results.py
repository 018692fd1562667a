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
- One split per number, named: alignment, code usage, length vs objects and its figure all
  read the split `strop eval` scored (eval.json's `split`, val by default), so CB% and
  Pearson agree between tables and figures; programs.parquet may hold more splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from strop import metrics
from strop.evaluation.plots import plot_length_vs_objects, plot_training_curves
from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import DASH, Figure, Section, Table
from strop.evaluation.report.formatting import (
    fmt,
    fmt_ci,
    fmt_est,
    label,
    n_of,
    noise_word,
    stats_table,
)


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
            f"One row per run folder (n = {len(runs)} runs); programs: rows of programs.parquet "
            "(every exported split).",
        )
    )
    sec.notes += [p for run in runs for p in run.problems]
    return sec


def _eval_split(run: RunData) -> str:
    return str((run.eval or {}).get("split") or "val")


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
                _eval_split(run),
                fmt(e.get("n_images")),
                fmt_est(e, "cos"),
                fmt_est(e, "r2"),
                fmt_est(e, "rmse"),
                *perceptual,
                fmt_est(e, "cb_pct", 1),
                fmt(e.get("eff_pct"), 1),
                fmt_est(e, "length_mean", 1),
                fmt(e.get("bits_per_image"), 0),
                fmt(e.get("compression_ratio"), 0),
                fmt(e.get("length_mode")),
            ]
        )
    if not with_lpips:
        notes = {(r.eval or {}).get("lpips_note") for r in runs if r.eval}
        why = "; ".join(sorted(str(n) for n in notes if n)) or "not scored"
        sec.notes.append(f"LPIPS is not in this report: {why} (README, LPIPS).")
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
        n = n_of([(r.eval or {}).get("n_images") for r in runs], "images")
        sec.tables.append(
            Table(
                "alignment",
                [
                    "run",
                    "K",
                    "split",
                    "n",
                    "Cos [95% CI]",
                    "R^2 [95% CI]",
                    "RMSE [95% CI]",
                    "SSIM",
                    *(["LPIPS"] if with_lpips else []),
                    "CB% [95% CI]",
                    "Eff%",
                    "mean length [95% CI]",
                    "bits/image",
                    "compression",
                    "length mode",
                ],
                rows,
                f"Each cell: the metric over the eval split's images ({n}), with a 95% "
                "percentile-bootstrap interval over images where eval.json has one.",
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
    chosen = sorted(
        (r for r in runs if r.training_mode in ("fixed", "curriculum")),
        key=lambda r: (r.k or 0, r.training_mode),
    )
    curriculum_at = {r.k: r for r in chosen if r.training_mode == "curriculum"}
    for run in chosen:
        e = run.eval or {}
        other = curriculum_at.get(run.k) if run.training_mode == "fixed" else None
        versus = DASH
        if other is not None and other.eval:
            ci_a, ci_b = (e.get("ci95") or {}), (other.eval.get("ci95") or {})
            versus = f"cos {noise_word(ci_a.get('cos'), ci_b.get('cos'))}"
        rows.append(
            [
                fmt(run.k),
                run.training_mode,
                run.name,
                fmt(e.get("n_images")),
                fmt_est(e, "cos"),
                fmt_est(e, "r2"),
                fmt_est(e, "cb_pct", 1),
                fmt_est(e, "length_mean", 1),
                versus,
            ]
        )
    n = n_of([(r.eval or {}).get("n_images") for r in chosen], "images")
    sec.tables.append(
        Table(
            "fixed_vs_curriculum",
            ["K", "mode", "run", "n", "Cos", "R^2", "CB%", "mean length", "vs curriculum"],
            rows,
            f"Each cell: the metric on the eval split ({n}) [95% bootstrap CI over images]; "
            "'within noise': the fixed run's interval overlaps the curriculum run's at the same K.",
        )
    )
    return sec


def _split_programs(run: RunData):
    """The run's programs of its eval split (all of them when rows carry no such split)."""
    programs = run.programs
    if programs is None:
        return None
    keep = [i for i, name in enumerate(programs.split) if name == _eval_split(run)]
    return programs.subset(np.asarray(keep)) if keep else programs


def _length_stats(run: RunData) -> dict[str, Any] | None:
    block = (run.eval or {}).get("length_vs_objects")
    if block:
        return block
    programs = _split_programs(run)
    if programs is not None and np.any(programs.n_objects >= 0):
        return metrics.length_vs_objects(programs.lengths, programs.n_objects)
    return None


def complexity(runs: list[RunData], fig_dir: Path) -> Section:
    sec = Section("Program length vs scene complexity", "length-vs-complexity")
    rows, per_count, ns = [], {}, []
    for run in runs:
        stats = _length_stats(run)
        if stats is None:
            sec.notes.append(
                f"{run.name}: no object counts: export programs with scenes (`strop export {run.folder.path}`)."
            )
            continue
        split_programs = _split_programs(run)
        lengths = split_programs.lengths if split_programs is not None else None
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
                _eval_split(run),
                fmt(stats.get("n")),
                fmt_ci(stats.get("pearson"), stats.get("pearson_ci")),
                fmt_ci(stats.get("spearman"), stats.get("spearman_ci")),
                fmt(lo),
                fmt(mean, 1),
                fmt(hi),
            ]
        )
        per_count[run.name] = stats.get("mean_length_by_objects") or {}
        ns.append(stats.get("n"))
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
                    "split",
                    "n",
                    "Pearson [95% CI]",
                    "Spearman [95% CI]",
                    "min length",
                    "mean length",
                    "max length",
                ],
                rows,
                f"Each row: one run's programs of the eval split ({n_of(ns, 'images')} with a "
                "known object count).",
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
                    caption="Each cell: mean program length of the eval split's images with that "
                    f"many objects ({n_of(ns, 'images')} in all).",
                )
            )
    split_sets = [(r, _split_programs(r)) for r in runs]
    series = [(label(r), p.lengths, p.n_objects) for r, p in split_sets if p is not None]
    fig = plot_length_vs_objects(series, fig_dir / "length_vs_objects.png") if series else None
    if fig:
        sec.figures.append(
            Figure(
                fig,
                "Program length against object count on the eval split (the images of the table "
                "above, so its Pearson r is the table's), one panel per run (jittered; red: mean).",
            )
        )
    return sec


def code_usage(runs: list[RunData]) -> Section:
    sec = Section("Code usage", "code-usage")
    rows, ns = [], []
    for run in runs:
        if run.programs is None or run.k is None:
            sec.notes.append(
                f"{run.name}: no programs.parquet: run `strop export {run.folder.path}`."
            )
            continue
        programs = _split_programs(run)
        assert programs is not None
        ns.append(len(programs))
        counts = metrics.code_counts(programs.codes, run.k)
        usage, reuse = metrics.codebook_usage(counts), metrics.code_reuse_stats(counts)
        purity = ((run.analysis or {}).get("code_reuse") or {}).get("purity_nmi")
        rows.append(
            [
                run.name,
                fmt(run.k),
                _eval_split(run),
                fmt(len(programs)),
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
            "Counted over active-prefix tokens of the eval split. Concentration: share of tokens "
            "taken by the top 10% of used codes, and the Herfindahl index; purity: NMI between a "
            "token's code and the attributes of the object it is attributed to (from `strop analyze`)."
        )
        sec.tables.append(
            Table(
                "code_usage",
                [
                    "run",
                    "K",
                    "split",
                    "n",
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
                f"Each row: active-prefix tokens of the eval split's programs ({n_of(ns, 'images')}), "
                "so CB% is eval.json's; purity from `strop analyze`.",
            )
        )
    return sec


def analysis(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("Structure analysis (counterfactual erasure)", "analysis")
    n = n_of([(r.analysis or {}).get("n_images") for r in runs if r.analysis], "images")
    table = stats_table(
        "analysis",
        runs,
        lambda r: {
            k: v
            for k, v in (r.analysis or {}).items()
            if k not in ("contingency", "grid", "seed", "split", "length_mode")
        },
        f"Each cell: one run's statistic over the images `strop analyze` erased ({n}); "
        "p-values and means from so few images are indicative only.",
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
