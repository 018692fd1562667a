"""Figures of evaluation, analysis and the report (matplotlib, Agg backend, PNG files).

Each function takes plain arrays or rows and a path, writes one PNG and returns its path
(or None when there is nothing to draw), so `strop.evaluation.analyze` and `strop.evaluation.report` share them
and a figure can be redrawn from files alone.

Design decisions
- The Agg backend is selected inside each function, never at import: importing this module
  must not change a user's interactive backend.
- Length-vs-object-count scatters jitter the integer object counts and overlay the per-count
  mean (the paper's Fig. 7 view); the title carries Pearson's r.
- Erasure panels draw maps on the patch grid stretched over the image (nearest for discrete
  maps, bilinear for the continuous E_j), all E_j of one image on one colour scale so tokens
  are comparable.
- The contingency heatmap is row-normalised (share of an attribute value's object patches per
  code) and keeps the most used codes, so K = 1024 stays legible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from strop import metrics


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, imported on first use (commands that
    draw nothing never load matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_erasure_panel(
    path: Path,
    image: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray | None,
    grid,
    title: str,
    n_tokens: int = 6,
) -> None:
    """Image, attribution map, object masks, and the strongest tokens' erasure maps over the image."""
    plt = pyplot()
    gh, gw = grid
    size = image.shape[0]
    extent = (0, size, size, 0)
    top: np.ndarray | list[int] = np.argsort(-maps.mean(axis=1))[:n_tokens] if len(maps) else []
    n = 3 + len(top)
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image, extent=extent)
    axes.flat[0].set_title("image", fontsize=8)
    if len(maps):
        axes.flat[1].imshow(image, extent=extent)
        axes.flat[1].imshow(
            maps.argmax(0).reshape(gh, gw),
            cmap="tab20",
            alpha=0.6,
            extent=extent,
            interpolation="nearest",
        )
    axes.flat[1].set_title("attribution argmax_j E_j", fontsize=8)
    axes.flat[2].imshow(image, extent=extent)
    if labels is not None:
        axes.flat[2].imshow(
            np.ma.masked_less(labels.reshape(gh, gw), 0),
            cmap="tab10",
            alpha=0.6,
            extent=extent,
            interpolation="nearest",
        )
    axes.flat[2].set_title("object masks", fontsize=8)
    vmax = float(maps.max()) if len(maps) else 1.0
    for ax, j in zip(list(axes.flat)[3:], top, strict=False):
        ax.imshow(image, extent=extent)
        ax.imshow(
            maps[j].reshape(gh, gw),
            cmap="magma",
            alpha=0.65,
            extent=extent,
            vmin=0,
            vmax=vmax,
            interpolation="bilinear",
        )
        ax.set_title(f"E_{j} (token {j})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_contingency(path: Path, contingency: dict[str, Any], max_codes: int = 40) -> None:
    """Row-normalised attribute x code heatmap over the most used codes."""
    plt = pyplot()
    counts = np.array(contingency["counts"], dtype=np.float64)
    codes = np.array(contingency["codes"])
    order = np.argsort(-counts.sum(0), kind="stable")[:max_codes]
    counts, codes = counts[:, order], codes[order]
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(5, 0.22 * len(codes) + 2.5), 0.3 * len(share) + 1.5))
    im = ax.imshow(share, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(contingency["rows"])), contingency["rows"], fontsize=7)
    ax.set_xticks(range(len(codes)), [str(c) for c in codes], fontsize=6, rotation=90)
    ax.set_xlabel("code of the attributed token")
    fig.colorbar(im, ax=ax, label="share of the row's object patches")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_length_vs_objects(
    series: list[tuple[str, np.ndarray, np.ndarray]], path: Path
) -> Path | None:
    """One scatter panel per run: program length against object count, with per-count means."""
    plt = pyplot()

    series = [(lbl, np.asarray(ln), np.asarray(no)) for lbl, ln, no in series]
    series = [(lbl, ln[no >= 0], no[no >= 0]) for lbl, ln, no in series if np.any(no >= 0)]
    if not series:
        return None
    fig, axes = plt.subplots(
        1, len(series), figsize=(4 * len(series), 3.4), squeeze=False, sharey=True
    )
    rng = np.random.default_rng(0)
    for ax, (label, lengths, n_obj) in zip(axes[0], series, strict=True):
        jitter = rng.uniform(-0.18, 0.18, len(n_obj))  # separate the integer grid visually
        ax.scatter(n_obj + jitter, lengths, s=8, alpha=0.35, color="tab:blue", edgecolors="none")
        counts = np.unique(n_obj)
        ax.plot(
            counts,
            [lengths[n_obj == c].mean() for c in counts],
            "o-",
            color="tab:red",
            label="mean",
        )
        r = metrics.pearson(lengths, n_obj).r
        ax.set_title(f"{label}  (Pearson {r:.2f})" if math.isfinite(r) else label, fontsize=10)
        ax.set_xlabel("objects in scene")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("program length")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loss_key(rows: list[dict[str, Any]]) -> str | None:
    keys = [k for row in rows for k in row if "loss" in k and isinstance(row[k], (int, float))]
    if not keys:
        return None
    return "loss" if "loss" in keys else max(set(keys), key=keys.count)


def plot_training_curves(runs: list[tuple[str, list[dict[str, Any]]]], path: Path) -> Path | None:
    """Loss, mean length and validation cosine against step; `runs` = (label, metrics.jsonl rows)."""
    plt = pyplot()

    panels = [
        ("loss", "training loss"),
        ("mean_length", "mean program length"),
        ("val_cos", "validation cosine"),
    ]
    logged = [(label, rows) for label, rows in runs if rows]
    if not logged:
        return None
    shown = [
        (key, title)
        for key, title in panels
        if any(
            _series(rows, _loss_key(rows) if key == "loss" else key)[0].size for _, rows in logged
        )
    ]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.3), squeeze=False)
    for ax, (key, title) in zip(axes[0], shown, strict=True):
        for label, rows in logged:
            steps, values = _series(rows, _loss_key(rows) if key == "loss" else key)
            if steps.size:
                ax.plot(steps, values, label=label, lw=1.2)
        if key == "loss":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(rows: list[dict[str, Any]], key: str | None) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r["step"], r[key])
        for r in rows
        if key and isinstance(r.get(key), (int, float)) and "step" in r
    ]
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    return (
        (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
        if pts
        else (np.zeros(0), np.zeros(0))
    )
