"""A headline beside the trivial baseline it must beat: one record shape for every output.

Every headline the toolkit prints (alignment of the program, probes of the scene from the
codes, knn decoding and QA, FG-ARI of the attribution maps, the order probe, quality:EPS) is
only evidence beside the baseline a referee asks for first, measured in the same run on the
same items. `compare` builds the record that sits beside the value it qualifies, under the
baseline's name (`mean_field`, `one_token`, `length_only`, `teacher_pooled`, `random_shot`,
`fixed_grid_2x2`, `shuffled_maps`, `bag_of_codes`, `constant_length`, ...):

    {"baseline": "mean_field", "metric": "cos", "value": 0.780, "baseline_value": 0.738,
     "advantage": 0.042, "interval": [0.036, 0.048], "n": 200, "higher_is_better": true,
     "verdict": "beyond baseline", "method": "paired percentile bootstrap ..."}

- `advantage` is oriented so that positive always means the headline is better (for an
  error, baseline minus headline), and `interval` is the paired bootstrap interval of it: the
  same resampled items score both, so the noise the two share cancels.
- `verdict` is "beyond baseline" only where the interval excludes 0 on the good side,
  "not beyond baseline" otherwise, and None (with `note`) below `MIN_N` items or when a side
  is undefined: a verdict from one image is no verdict.
- The report finds these records anywhere in `eval.json`, `analysis.json` and the LLM
  summaries by their shape (`is_record`), so a new baseline needs no report code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

#: Below this many items a comparison gets no verdict ("too few items").
MIN_N = 10
BEYOND = "beyond baseline"
NOT_BEYOND = "not beyond baseline"
METHOD = "paired percentile bootstrap over items, {n_boot} resamples, seed {seed}"
#: The banner of a run whose program barely beats the average teacher field.
COLLAPSED = "collapsed: the codes barely depend on the image"


def compare(
    n: int,
    headline: Callable[[np.ndarray], float],
    baseline: Callable[[np.ndarray], float],
    *,
    name: str,
    metric: str,
    higher_is_better: bool = True,
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    min_n: int = MIN_N,
) -> dict[str, Any]:
    """Compare two statistics of the same `n` items: `headline(idx)` and `baseline(idx)` are
    each computed on the items `idx` (all of them: `np.arange(n)`; a bootstrap resample: with
    repeats). Statistics that are not means (R^2, FG-ARI, a correlation) work the same way."""
    every = np.arange(n)
    value = _num(headline(every)) if n else None
    base = _num(baseline(every)) if n else None
    sign = 1.0 if higher_is_better else -1.0
    record: dict[str, Any] = {
        "baseline": name,
        "metric": metric,
        "value": value,
        "baseline_value": base,
        "advantage": None if value is None or base is None else sign * (value - base),
        "interval": None,
        "n": int(n),
        "higher_is_better": bool(higher_is_better),
        "verdict": None,
        "method": METHOD.format(n_boot=n_boot, seed=seed),
    }
    if record["advantage"] is None:
        record["note"] = "undefined on these items"
        return record
    if n < min_n:
        record["note"] = f"too few items for a verdict (n = {n} < {min_n})"
        return record
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        a, b = _num(headline(idx)), _num(baseline(idx))
        if a is not None and b is not None:
            diffs.append(sign * (a - b))
    if len(diffs) < n_boot // 2:
        record["note"] = "undefined on most resamples"
        return record
    lo, hi = np.quantile(np.asarray(diffs), [0.5 - level / 2, 0.5 + level / 2])
    record["interval"] = [float(lo), float(hi)]
    record["verdict"] = BEYOND if lo > 0 else NOT_BEYOND
    return record


def compare_means(
    headline: np.ndarray | list[float],
    baseline: np.ndarray | list[float],
    **kwargs: Any,
) -> dict[str, Any]:
    """`compare` of two per-item scores' means (paired: item i scored both ways)."""
    a = np.asarray(headline, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need one value per item: {a.shape} vs {b.shape}")
    return compare(len(a), lambda idx: a[idx].mean(), lambda idx: b[idx].mean(), **kwargs)


def is_record(value: Any) -> bool:
    """Whether `value` is a comparison record (as `compare` writes it)."""
    return isinstance(value, dict) and {"baseline", "verdict", "advantage"} <= value.keys()


def find_records(tree: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every comparison record in a JSON tree, with its dotted path (`alignment.mean_field`)."""
    if is_record(tree):
        yield path, tree
        return
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from find_records(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from find_records(value, f"{path}[{i}]")


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
