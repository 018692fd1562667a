"""Cross-run comparison: one table (rich on the console, Markdown on disk) and one figure.

Design decisions
- Every cell that has a null shows it beside the observed value, `observed (shuffle / unigram)`,
  so no figure is read without its baseline; columns are the headline statistics of
  `summary.json`, rows the runs in the order mined (natural order: k32, k64, k128).
- The figure has one panel per run: rank-frequency of unigrams and bigrams on log-log axes,
  with the bigram curves of the shuffle and unigram nulls dashed (unigram curves of the nulls
  would coincide with the observed one: both nulls keep code frequencies). Matplotlib's Agg
  backend is forced so it works headless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: (summary key, column title, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("zipf_exponent_bigram", "Zipf s (2-grams)", "{:.2f}"),
    ("reuse_rate", "reuse (2-grams)", "{:.3f}"),
    ("compression_ratio", "Re-Pair compression", "{:.3f}"),
    ("perplexity_1", "ppl n=1", "{:.1f}"),
    ("perplexity_3", "ppl n=3", "{:.1f}"),
    ("adjacent_mi", "adjacent MI (bits)", "{:.3f}"),
    ("code_position_mi", "code-position MI", "{:.3f}"),
    ("n_significant_pairs", "adjacent pairs beyond shuffle", "{:.0f}"),
    ("n_significant_any_pairs", "co-occurring pairs beyond unigram", "{:.0f}"),
)


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _cell(summary: dict, key: str, fmt: str) -> str:
    stat = summary.get(key)
    if not isinstance(stat, dict):
        return "-"
    text = _fmt(stat.get("observed"), fmt)
    if stat.get("null_shuffle") is None and stat.get("null_unigram") is None:
        return text
    return f"{text} ({_fmt(stat.get('null_shuffle'), fmt)} / {_fmt(stat.get('null_unigram'), fmt)})"


def comparison_rows(summaries: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "K", "programs", "codes", "vocab used"] + [title for _, title, _ in COLUMNS]
    rows = []
    for s in summaries:
        rows.append(
            [
                str(s["run"]),
                str(s["k"]),
                str(s["n_programs"]),
                str(s["n_tokens"]),
                str(s["vocab_used"]),
            ]
            + [_cell(s, key, fmt) for key, _, fmt in COLUMNS]
        )
    return header, rows


def comparison_markdown(summaries: list[dict]) -> str:
    header, rows = comparison_rows(summaries)
    lines = [
        "# Grammar mining: runs side by side",
        "",
        "Each statistic: observed (shuffle-within-program null / unigram-resample null), null values"
        " are means over replicates. Details per run in `<run>/grammar/summary.json`.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    skipped = [s["run"] for s in summaries if s.get("null_tests", {}).get("status") == "skipped"]
    if skipped:
        lines += ["", f"Null tests skipped (corpus too small): {', '.join(map(str, skipped))}."]
    return "\n".join(lines) + "\n"


def print_comparison(summaries: list[dict]) -> None:
    """The same numbers on the console, transposed (statistics as rows) to fit a terminal."""
    from rich.console import Console
    from rich.table import Table

    header, rows = comparison_rows(summaries)
    table = Table(title="strop-grammar: observed (shuffle null / unigram null)")
    table.add_column("statistic", style="bold")
    for row in rows:
        table.add_column(row[0], overflow="fold")
    for i, name in enumerate(header[1:], start=1):
        table.add_row(name, *[row[i] for row in rows])
    console = Console()
    console.print(table)
    for s in summaries:
        if s.get("null_tests", {}).get("status") == "skipped":
            console.print(f"[yellow]{s['run']}: {s['null_tests']['reason']}")


def plot_rank_frequency(curves: dict[str, dict[str, np.ndarray]], path: Path) -> Path:
    """One log-log rank-frequency panel per run, nulls dashed; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grammar.zipf import rank_frequency

    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    styles = {
        "observed_1": ("observed, codes", "-", "C0"),
        "observed_2": ("observed, 2-grams", "-", "C1"),
        "shuffle_2": ("shuffle null, 2-grams", "--", "C2"),
        "unigram_2": ("unigram null, 2-grams", ":", "C3"),
        "markov_2": ("Markov null, 2-grams", "-.", "C4"),
    }
    for ax, (name, run_curves) in zip(axes[0], curves.items(), strict=False):
        for key, (label, style, color) in styles.items():
            if key in run_curves and np.any(run_curves[key] > 0):
                freq = rank_frequency(run_curves[key])
                ax.loglog(
                    np.arange(1, freq.size + 1), freq, style, color=color, label=label, lw=1.4
                )
        ax.set_title(str(name))
        ax.set_xlabel("rank")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("frequency")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
