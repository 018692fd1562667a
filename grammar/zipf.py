"""Rank-frequency (Zipf) fits.

Design decision: the exponent is the negated slope of an ordinary least-squares line through
(log rank, log frequency) over the ranks whose count is at least `min_count` (default 5). The
tail of counts 1, 2, 3... is a staircase of ties that flattens any fit and says more about
corpus size than about the law; a maximum-likelihood discrete power-law fit is the rigorous
alternative but needs an x_min search, which a headline comparison against nulls fitted the
same way does not. Counts of n-grams of order 1 hardly differ from the nulls (both keep code
frequencies); order 2 is where reuse of pieces shows.
"""

from __future__ import annotations

import numpy as np


def rank_frequency(counts: np.ndarray) -> np.ndarray:
    """Counts sorted descending, zeros dropped (rank r is index r-1)."""
    counts = np.asarray(counts)
    return np.sort(counts[counts > 0])[::-1]


def zipf_fit(counts: np.ndarray, min_count: int = 5) -> dict[str, float]:
    """{'exponent', 'r2', 'n_ranks'} of the log-log fit; NaN when fewer than 3 ranks qualify."""
    freq = rank_frequency(counts)
    freq = freq[freq >= min_count]
    if freq.size < 3:
        return {"exponent": float("nan"), "r2": float("nan"), "n_ranks": int(freq.size)}
    x = np.log(np.arange(1, freq.size + 1, dtype=np.float64))
    y = np.log(freq.astype(np.float64))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(resid**2) / total if total > 0 else float("nan")
    return {"exponent": float(-slope), "r2": float(r2), "n_ranks": int(freq.size)}
