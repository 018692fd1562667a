"""Experiment report: `report.md` and a self-contained `report.html` over every sub-run.

`build_report(EXPERIMENT)` compares the runs of one experiment (e.g. `runs/clevr/k32`,
`k64`, `k128`): alignment (the paper's CLEVR Table 14 columns), fixed vs curriculum
(Table 15) when both kinds of run exist, length vs scene complexity (Sec. 5.4, Fig. 7), code
usage, structure analysis, the grammar summary and the LLM decoding table (Appendix G)
beside its LLM-free baselines, plus figures.

Design decisions
- Reads files only (config.json, eval.json, metrics.jsonl, programs.parquet,
  analysis/analysis.json and figures, grammar/summary.json and figures,
  llm/<model>/summary.json): no torch, no checkpoint, so a report can be rebuilt wherever
  the run folders are copied.
- One intermediate (sections of paragraphs, notes, tables and figures) rendered twice:
  Markdown with figures linked by relative path, and HTML through a Jinja template with
  figures embedded as base64 data URIs so the page is a single file.
- A missing or unreadable part becomes a note naming the command that produces it; the
  report fails only when the folder holds no run at all.
- Grammar and LLM summaries are written by other tools; they are rendered generically
  (nested numbers flattened to `a.b` rows) so a new statistic shows up without a change here.
  A statistic stored as a dict with an observed value and null-model values is shown as
  `observed (null_x ..., null_y ...)`: every headline figure beside its nulls.
- The HTML marks `<body data-images-loaded="true">` once every image has decoded, which the
  headless-browser test reads back.
"""

from __future__ import annotations

import base64
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup, escape

from strop import __version__, metrics
from strop.plots import plot_length_vs_objects, plot_training_curves
from strop.runs import Programs, RunFolder, RunFolderError, discover_runs, read_json
from strop.scenes import atomic_write_text

DASH = "—"
BASELINES = ("naive", "knn")
_TEMPLATES = Path(__file__).with_name("report_templates")


# --------------------------------------------------------------------------- structure


@dataclass
class Table:
    key: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str

    @property
    def data_uri(self) -> str:
        mime = {
            "png": "image/png",
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "svg": "image/svg+xml",
        }
        kind = mime.get(self.path.suffix.lower().lstrip("."), "application/octet-stream")
        return f"data:{kind};base64," + base64.b64encode(self.path.read_bytes()).decode("ascii")


@dataclass
class Section:
    title: str
    anchor: str
    text: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


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
    figures: dict[str, list[Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

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
    if folder.programs_path.is_file():
        data.programs = attempt("programs.parquet", folder.read_programs)
    data.metrics = attempt("metrics.jsonl", folder.read_metrics) or []
    analysis = folder.path / "analysis" / "analysis.json"
    if analysis.is_file():
        data.analysis = attempt("analysis/analysis.json", lambda: read_json(analysis))
    if (folder.grammar_dir / "summary.json").is_file():
        data.grammar = attempt(
            "grammar/summary.json", lambda: read_json(folder.grammar_dir / "summary.json")
        )
    if folder.llm_dir.is_dir():
        for sub in sorted(p for p in folder.llm_dir.iterdir() if (p / "summary.json").is_file()):
            summary = attempt(
                f"llm/{sub.name}/summary.json", lambda s=sub: read_json(s / "summary.json")
            )
            if summary is not None:
                data.llm[sub.name] = summary
    data.figures["analysis"] = sorted((folder.path / "analysis" / "figures").glob("*.png"))
    grammar_pngs = sorted(folder.grammar_dir.rglob("*.png")) if folder.grammar_dir.is_dir() else []
    # the rank-frequency plot first: it is the one the report is meant to show
    data.figures["grammar"] = sorted(grammar_pngs, key=lambda p: ("rank" not in p.name, p.name))
    return data


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return DASH if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return DASH
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def fmt_ci(r: Any, ci: Any) -> str:
    if r is None:
        return DASH
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        return f"{fmt(r)} [{fmt(ci[0])}, {fmt(ci[1])}]"
    return fmt(r)


def _label(run: RunData) -> str:
    return f"{run.name} (K={run.k})" if run.k is not None else run.name


_OBSERVED_KEYS = ("observed", "value", "real", "actual", "statistic", "stat")


def _observed_with_nulls(d: dict[str, Any]) -> str | None:
    """`observed (null_a m ± sd, ...)` for a statistic stored beside its null-model values."""
    key = next((k for k in _OBSERVED_KEYS if k in d), None)
    if key is None or not any("null" in k for k in d) or isinstance(d[key], (list, dict)):
        return None
    parts = []
    for name, value in d.items():
        if name == key or name.endswith("_sd") or isinstance(value, list):
            continue
        if isinstance(value, dict):
            parts += [
                f"{name} {sub} {fmt(v)}"
                for sub, v in value.items()
                if not isinstance(v, (dict, list))
            ]
            continue
        sd = d.get(f"{name}_sd")
        parts.append(f"{name} {fmt(value)}" + (f" ± {fmt(sd)}" if sd is not None else ""))
    return f"{fmt(d[key])} ({', '.join(parts)})" if parts else fmt(d[key])


#: Bookkeeping, not results: left out of the generic statistics tables.
_SKIP_KEYS = frozenset(
    {"config", "seconds", "protocol", "usage", "run", "path", "grammar_version", "k_source"}
)


def flatten_stats(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested summary -> {"a.b": "formatted"}; lists, long strings and bookkeeping are left out."""
    out: dict[str, str] = {}
    for name, value in d.items():
        key = f"{prefix}{name}"
        if name in _SKIP_KEYS:
            continue
        if isinstance(value, dict):
            pair = _observed_with_nulls(value)
            if pair is not None:
                out[key] = pair
            else:
                out.update(flatten_stats(value, key + "."))
        elif isinstance(value, (int, float, np.number)) or value is None:
            out[key] = fmt(value)
        elif isinstance(value, str) and len(value) <= 40:
            out[key] = value
    return out


def _stats_table(key: str, runs: list[RunData], get) -> Table | None:
    flat = {run.name: flatten_stats(get(run)) for run in runs if get(run)}
    if not flat:
        return None
    names: list[str] = []
    for stats in flat.values():
        names += [n for n in stats if n not in names]
    have = [run for run in runs if run.name in flat]
    rows = [[n] + [flat[r.name].get(n, DASH) for r in have] for n in names]
    return Table(key, ["statistic"] + [_label(r) for r in have], rows)


# --------------------------------------------------------------------------- figures


# --------------------------------------------------------------------------- sections


def _overview(runs: list[RunData], experiment: Path) -> Section:
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


def _alignment(runs: list[RunData]) -> Section:
    sec = Section("Alignment of the interpreted field with the teacher", "alignment")
    rows = []
    for run in runs:
        e = run.eval
        if e is None:
            sec.notes.append(f"{run.name}: no eval.json: run `strop eval {run.folder.path}`.")
            continue
        rows.append(
            [
                run.name,
                fmt(run.k),
                fmt(e.get("cos")),
                fmt(e.get("r2")),
                fmt(e.get("rmse")),
                fmt(e.get("ssim")),
                fmt(e.get("cb_pct"), 1),
                fmt(e.get("eff_pct"), 1),
                fmt(e.get("length_mean"), 1),
                fmt(e.get("bits_per_image"), 0),
                fmt(e.get("compression_ratio"), 0),
                fmt(e.get("length_mode")),
            ]
        )
    if rows:
        sec.text.append(
            "Cosine, R^2 and RMSE compare the interpreted field with the frozen teacher's patch features on "
            "held-out images; SSIM scores the pixel probe; CB% is the share of codes used in active prefixes and "
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


def _fixed_vs_curriculum(runs: list[RunData]) -> Section:
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


def _complexity(runs: list[RunData], fig_dir: Path) -> Section:
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
        (_label(r), r.programs.lengths, r.programs.n_objects)
        for r in runs
        if r.programs is not None
    ]
    fig = plot_length_vs_objects(series, fig_dir / "length_vs_objects.png") if series else None
    if fig:
        sec.figures.append(
            Figure(
                fig, "Program length against object count, one panel per run (jittered; red: mean)."
            )
        )
    return sec


def _code_usage(runs: list[RunData]) -> Section:
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


def _analysis(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("Structure analysis (counterfactual erasure)", "analysis")
    table = _stats_table(
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


def _training(runs: list[RunData], fig_dir: Path) -> Section:
    sec = Section("Training curves", "training")
    for run in runs:
        if not run.metrics:
            sec.notes.append(f"{run.name}: no metrics.jsonl (training log).")
    fig = plot_training_curves(
        [(_label(r), r.metrics) for r in runs], fig_dir / "training_curves.png"
    )
    if fig:
        sec.figures.append(
            Figure(
                fig, "Training loss, mean program length and validation cosine from metrics.jsonl."
            )
        )
    return sec


def _grammar(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("Grammar of the programs", "grammar")
    table = _stats_table("grammar", runs, lambda r: r.grammar)
    if table is None:
        sec.notes.append(f"no grammar results: run `strop-grammar mine {experiment}`.")
        return sec
    sec.text.append(
        "From `strop-grammar mine`. Headline statistics stand beside their null corpora "
        "(null_shuffle: codes shuffled within programs, tests order; null_unigram: codes redrawn "
        "from the unigram distribution at the same lengths, tests reuse beyond frequency), as "
        "mean ± sd over the null replicates; corpus facts follow."
    )
    headline = [row for row in table.rows if any("(null" in cell for cell in row[1:])]
    facts = [row for row in table.rows if row not in headline]
    if headline:
        sec.tables.append(
            Table("grammar", table.headers, headline, "Statistics against their nulls")
        )
    if facts:
        sec.tables.append(Table("grammar_facts", table.headers, facts, "Corpus facts"))
    for run in runs:
        if run.grammar is None:
            sec.notes.append(
                f"{run.name}: no grammar results: run `strop-grammar mine {run.folder.path}`."
            )
        for png in run.figures.get("grammar", []):
            sec.figures.append(Figure(png, f"{run.name}: grammar, {png.stem.replace('_', ' ')}"))
    # `strop-grammar mine EXPERIMENT` draws every run's rank-frequency curve in one figure
    shared = experiment / "figures" / "rank_frequency.png"
    if shared.is_file() and len(runs) > 1:
        sec.figures.insert(
            0, Figure(shared, "Code rank-frequency, every run (from strop-grammar).")
        )
    return sec


def _is_baseline(model: str, summary: dict[str, Any]) -> bool:
    return model in BASELINES or summary.get("backend") in BASELINES


_PROTOCOL_KEYS = ("shots", "test", "seed", "temperature", "structured", "permute_codes")


def _protocol(summary: dict[str, Any]) -> dict[str, Any]:
    """The few protocol fields a reader needs, from `protocol` or the summary's top level."""
    proto = summary.get("protocol") or summary
    return {
        k: proto[k] for k in _PROTOCOL_KEYS if k in proto and not isinstance(proto[k], (dict, list))
    }


def _llm(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("LLM scene decoding from programs", "llm")
    entries = [(model, run, s) for run in runs for model, s in run.llm.items()]
    if not entries:
        sec.notes.append(
            f"no LLM decoding results: run `strop-llm decode --model NAME --k K --runs {experiment}` "
            "(and `--backend naive` / `--backend knn` for the baselines)."
        )
        return sec
    thresholds: list[str] = []
    for _, _, s in entries:
        thresholds += [str(t) for t in (s.get("ap") or {}) if str(t) not in thresholds]
    entries.sort(key=lambda e: (not _is_baseline(e[0], e[2]), e[0], e[1].k or 0))
    rows = []
    for model, run, s in entries:
        name = f"{model} (baseline)" if _is_baseline(model, s) else model
        fails = f"{s.get('parse_fails', DASH)} / {s.get('n', DASH)}"
        ap = {str(k): v for k, v in (s.get("ap") or {}).items()}
        rows.append(
            [
                name,
                fmt(run.k),
                fails,
                fmt(s.get("count_err"), 2),
                fmt(s.get("attr_acc")),
                fmt(s.get("pos_mse"), 2),
                fmt(s.get("pos_mae"), 2),
            ]
            + [fmt(ap.get(t)) for t in thresholds]
        )
    sec.tables.append(
        Table(
            "llm",
            ["model", "K", "parse fails", "count err", "attr acc", "pos MSE", "pos MAE"]
            + [f"AP@{t}" for t in thresholds],
            rows,
        )
    )
    proto = next((_protocol(s) for m, _r, s in entries if not _is_baseline(m, s)), None)
    if proto:
        sec.text.append("Protocol: " + ", ".join(f"{k} {fmt(v)}" for k, v in proto.items()) + ".")
    if all(_is_baseline(m, s) for m, _, s in entries):
        sec.notes.append(
            f"only the LLM-free baselines so far: run `strop-llm decode --model NAME --k K --runs {experiment}`."
        )
    if not any(_is_baseline(m, s) for m, _, s in entries):
        sec.notes.append(
            f"no baselines: run `strop-llm decode --backend naive --k K --runs {experiment}` and `--backend knn`."
        )
    return sec


# --------------------------------------------------------------------------- rendering


def _md_table(t: Table) -> list[str]:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = [f"*{t.caption}*", ""] if t.caption else []
    lines += ["| " + " | ".join(esc(h) for h in t.headers) + " |", "|" + "---|" * len(t.headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows]
    return lines + [""]


def render_markdown(title: str, subtitle: str, sections: list[Section], base: Path) -> str:
    out = [f"# {title}", "", subtitle, ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for p in sec.text:
            out += [p, ""]
        for n in sec.notes:
            out += [f"> {n}", ""]
        for t in sec.tables:
            out += _md_table(t)
        for f in sec.figures:
            out += [
                f"![{f.caption}]({Path(os.path.relpath(f.path, base)).as_posix()})",
                "",
                f"*{f.caption}*",
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


_CODE_SPAN = re.compile(r"`([^`]+)`")


def inline_code(text: str) -> Markup:
    """Escape `text`, then turn Markdown `code` spans into <code> (notes name commands)."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))


def render_html(title: str, subtitle: str, sections: list[Section]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html", "j2"])
    )
    env.filters["inline_code"] = inline_code
    n_images = sum(len(s.figures) for s in sections)
    return env.get_template("report.html.j2").render(
        title=title, subtitle=subtitle, sections=sections, n_images=n_images, version=__version__
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    fig_dir = out / "figures"
    runs = [load_run(f) for f in folders]
    sections = [
        _overview(runs, experiment),
        _alignment(runs),
        _fixed_vs_curriculum(runs),
        _complexity(runs, fig_dir),
        _code_usage(runs),
        _analysis(runs, experiment),
        _training(runs, fig_dir),
        _grammar(runs, experiment),
        _llm(runs, experiment),
    ]
    title = f"STROP report: {experiment.name}"
    ks = ", ".join(str(r.k) for r in runs if r.k is not None) or "unknown"
    subtitle = f"{len(runs)} run(s), codebook sizes K = {ks}. Generated by strop {__version__}."
    md, html = out / "report.md", out / "report.html"
    atomic_write_text(md, render_markdown(title, subtitle, sections, out))
    atomic_write_text(html, render_html(title, subtitle, sections))
    for path in (md, html):  # the atomic writer's temp files are 0600; a report is for sharing
        path.chmod(0o666 & ~_umask())
    return md, html
