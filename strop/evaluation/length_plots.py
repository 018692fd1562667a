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

from strop.evaluation.plots import pyplot

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
    plt = pyplot()
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
    """Per (label, quality_control block), against requested EPS: the achieved mean error, the
    share of images that reach EPS, and the mean length, for quality:EPS and search:EPS."""
    series = [(label, block) for label, block in series if block.get("rows")]
    if not series:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12.6, 4.0))
    panels = [
        ("error_mean", "achieved mean align error"),
        ("reached", "share of images with error <= EPS"),
        ("length_mean", "mean program length"),
    ]
    lows, highs = [], []
    for i, (label, block) in enumerate(series):
        rows = block["rows"]
        eps = [r["eps"] for r in rows]
        color = plt.cm.tab10(i % 10)
        for ax, (key, _) in zip(axes, panels, strict=True):
            quality = [r.get(f"quality_{key}") for r in rows]
            search = [r.get(f"search_{key}") for r in rows]
            if any(v is None for v in quality + search):  # an eval.json from before the share
                continue
            ax.plot(eps, quality, "o-", color=color, label=f"{label} quality:EPS")
            ax.plot(eps, search, "^:", color=color, alpha=0.7, label=f"{label} search:EPS")
            if key == "error_mean":
                lows.append(min(eps + quality + search))
                highs.append(max(eps + quality + search))
    if lows:
        lo, hi = min(lows), max(highs)
        axes[0].plot([lo, hi], [lo, hi], color="gray", lw=1, label="achieved = requested")
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.set_xlabel("requested EPS (align error)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
