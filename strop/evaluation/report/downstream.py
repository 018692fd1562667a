"""Report sections over what other tools wrote into the runs: grammar and LLM decoding.

`grammar` summarises `strop-grammar mine` (grammar/summary.json and figures); `llm` is the
LLM decoding table (Appendix G) beside its LLM-free baselines (`strop-llm decode`,
llm/<model>/summary.json).

Design decisions
- These summaries are written by other tools, so they are rendered generically
  (`formatting.flatten_stats`) and a new statistic shows up without a change here; the
  grammar table is split into headline statistics (those shown beside their nulls) and corpus
  facts.
- The experiment-level rank-frequency figure that `strop-grammar mine EXPERIMENT` draws goes
  first when the experiment has more than one run.
- LLM rows: baselines (`naive`, `knn`, by model name or `backend`) first, then models by name
  and K; AP columns are the union of the thresholds any summary reports. The protocol line
  comes from the first non-baseline summary.
- A missing part becomes a note naming the command that produces it, including the runs
  that lack grammar results and a missing side of the LLM-vs-baseline comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from strop.evaluation.report.collect import RunData
from strop.evaluation.report.document import Figure, Section, Table
from strop.evaluation.report.formatting import DASH, fmt, fmt_ci, n_of, stats_table
from strop.metrics import bootstrap_ci

BASELINES = ("naive", "knn")


def grammar(runs: list[RunData], experiment: Path) -> Section:
    sec = Section("Grammar of the programs", "grammar")
    table = stats_table("grammar", runs, lambda r: r.grammar)
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
    n = n_of([(r.grammar or {}).get("n_programs") for r in runs if r.grammar], "programs")
    if headline:
        sec.tables.append(
            Table(
                "grammar",
                table.headers,
                headline,
                f"Statistics against their nulls: each cell is the statistic of one run's corpus "
                f"({n}), then each null's mean ± sd over its replicates.",
            )
        )
    if facts:
        sec.tables.append(
            Table(
                "grammar_facts",
                table.headers,
                facts,
                f"Corpus facts: each cell is one run's count or statistic ({n}).",
            )
        )
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


def _with_ci(summary: dict[str, Any], scores: list[dict[str, Any]], key: str, digits: int) -> str:
    """The summary's mean of `key` with a 95% bootstrap interval over the answered images,
    when the per-image scores reproduce that mean (else the mean alone)."""
    value = summary.get(key)
    per_image = np.array([s[key] for s in scores if s.get(key) is not None], dtype=float)
    if value is None or per_image.size < 2 or not np.isclose(per_image.mean(), value):
        return fmt(value, digits)
    ci = bootstrap_ci(per_image.size, lambda idx: float(per_image[idx].mean()))
    return fmt_ci(value, ci, digits)


def llm(runs: list[RunData], experiment: Path) -> Section:
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
                _with_ci(s, run.llm_scores.get(model, []), "count_err", 2),
                _with_ci(s, run.llm_scores.get(model, []), "attr_acc", 3),
                fmt(s.get("pos_mse"), 2),
                _with_ci(s, run.llm_scores.get(model, []), "pos_mae", 2),
            ]
            + [fmt(ap.get(t)) for t in thresholds]
        )
    n = n_of([s.get("n") for _, _, s in entries], "images")
    sec.tables.append(
        Table(
            "llm",
            ["model", "K", "parse fails", "count err", "attr acc", "pos MSE", "pos MAE"]
            + [f"AP@{t}" for t in thresholds],
            rows,
            f"Each row: one decode of the held-out images ({n}); each cell a mean over the "
            "answered images [95% bootstrap CI over them, from results.jsonl]; rows whose "
            "intervals overlap are within noise; parse fails: unparseable answers / answers.",
        )
    )
    for model, run, s in entries:
        missing = s.get("missing")
        if missing:
            expected = (s.get("protocol") or {}).get("test") or (missing + int(s.get("n") or 0))
            how = (
                f"`strop-llm decode --backend {model} --k {run.k} --runs {experiment}`"
                if _is_baseline(model, s)
                else f"`strop-llm decode --model {model} --k {run.k} --runs {experiment}` "
                "with the --base-url (or --backend) it used"
            )
            sec.notes.append(
                f"{model} K={run.k}: {missing} of {expected} answers missing (requests that "
                f"failed are not scored); rerun {how} to finish them: answered images are kept."
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
