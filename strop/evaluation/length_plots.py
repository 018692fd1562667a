"""Figures of length control: length-quality curves (`sweep.json`) and the calibration of
`quality:EPS` (eval.json's `quality_control`). Same conventions as `strop.evaluation.plots`
(Agg backend chosen inside each function, one PNG per call, None when there is nothing to
draw), kept apart so that module's figures and these evolve independently.

Design decisions
- Curves: one panel per run side by side (the report passes them sorted by K), shared y axis,
  cos against the prefix length N; the count probe's R^2 on a second axis (dashed) when the
  split has object counts. Operating points sit on the same axes at their mean length: the
  head a star, fixed a square, search:EPS a triangle.
- Calibration: requested EPS on x, achieved mean error on y, linear (reachable errors span a
  narrow band, where log ticks only crowd), with the diagonal; the
  head (`quality:EPS`) and the search at the same EPS, so the reader sees both how well the
  head is calibrated and what the search reaches at many passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strop.evaluation.plots import _plt

_MARKERS = {
    "head": ("*", 14, "tab:red"),
    "fixed": ("s", 7, "black"),
    "search": ("^", 8, "tab:green"),
}


def plot_length_curves(series: list[tuple[str, dict[str, Any]]], path: Path) -> Path | None:
    """One panel per (label, sweep.json dict): cos vs N with the operating points marked."""
    series = [(label, sweep) for label, sweep in series if sweep.get("rows")]
    if not series:
        return None
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False, sharey=True
    )
    for ax, (label, sweep) in zip(axes[0], series, strict=True):
        rows = [r for r in sweep["rows"] if r.get("cos") is not None]
        ax.plot(
            [r["n"] for r in rows],
            [r["cos"] for r in rows],
            "o-",
            ms=3,
            color="tab:blue",
            label="prefix:N",
        )
        for name, point in (sweep.get("operating_points") or {}).items():
            if point.get("cos") is None or name not in _MARKERS:
                continue
            marker, size, color = _MARKERS[name]
            tag = f"search:{point['eps']:.3g}" if name == "search" and "eps" in point else name
            ax.plot(
                point["length_mean"],
                point["cos"],
                marker,
                ms=size,
                color=color,
                linestyle="none",
                label=tag,
            )
        counts = [r for r in sweep["rows"] if r.get("count_probe_r2") is not None]
        if counts:
            twin = ax.twinx()
            twin.plot(
                [r["n"] for r in counts],
                [r["count_probe_r2"] for r in counts],
                "--",
                color="tab:orange",
                label="count probe R²",
            )
            twin.set_ylabel("count probe R² (dashed)", fontsize=8, color="tab:orange")
            twin.tick_params(axis="y", labelsize=7, colors="tab:orange")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("program length N (tokens)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    axes[0][0].set_ylabel("cosine to teacher")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_calibration(series: list[tuple[str, dict[str, Any]]], path: Path) -> Path | None:
    """Requested EPS vs achieved mean error, per (label, quality_control block)."""
    series = [(label, block) for label, block in series if block.get("rows")]
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    lows, highs = [], []
    for i, (label, block) in enumerate(series):
        rows = block["rows"]
        eps = [r["eps"] for r in rows]
        color = plt.cm.tab10(i % 10)
        ax.plot(
            eps,
            [r["quality_error_mean"] for r in rows],
            "o-",
            color=color,
            label=f"{label} quality:EPS",
        )
        ax.plot(
            eps,
            [r["search_error_mean"] for r in rows],
            "^:",
            color=color,
            alpha=0.7,
            label=f"{label} search:EPS",
        )
        values = (
            eps + [r["quality_error_mean"] for r in rows] + [r["search_error_mean"] for r in rows]
        )
        lows.append(min(values))
        highs.append(max(values))
    lo, hi = min(lows), max(highs)
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, label="achieved = requested")
    ax.set_xlabel("requested EPS (align error)")
    ax.set_ylabel("achieved mean align error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
