"""Pure metric functions for evaluation and analysis (NumPy/SciPy only, no torch).

Everything here takes arrays and returns numbers, so the same code scores a trained model,
a fixture in a test, or a file on disk. `strop.evaluation.evaluate` and `strop.evaluation.analyze` convert tensors
to NumPy and call these.

Design decisions (the paper names the metrics but leaves their exact definitions open)
- Alignment (paper Sec. 5.2, Table 1): cosine is the mean over every (image, patch) of the
  cosine between interpreted and teacher vectors. R^2 is the pooled coefficient of
  determination over all (image, patch, channel) values, with the per-channel teacher mean as
  the baseline predictor: `1 - SS_res / SS_tot`, `SS_tot = sum_d sum_n (F_nd - mean_d)^2`.
  RMSE is over every scalar. `FieldStats` accumulates all three over batches in float64 with
  exact sufficient statistics, so a streamed evaluation equals the one-shot computation.
- Codebook (CB%, Eff%): counted over active-prefix tokens only (padding is -1 and ignored).
  CB% = share of the K codes used at least once; Eff% = exp(entropy of usage in nats) / K.
- SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), C1 = (0.01)^2,
  C2 = (0.03)^2 for images in [0, 1], computed per channel with "valid" borders cropped,
  then averaged over channels and pixels; the usual reference setting.
- Bits: a program of length L over a codebook of K entries costs `L * ceil(log2 K)` bits (a
  fixed-width index per token, which is how it would be stored; the paper's 64 x 10 = 640-bit
  ceiling uses the same count). The length itself is not charged, as in the paper.
  The compression ratio divides the teacher's patch features stored at fp16 (`P * D * 16`
  bits) by the program bits; the paper quotes float32 sources, so its ratios are twice ours.
- Correlation CIs: Pearson uses the Fisher z-transform (`atanh(r) +- z / sqrt(n - 3)`).
  Spearman uses a seeded percentile bootstrap by default, since its Fisher interval needs a
  variance correction that depends on the unknown population rho; `method="fisher"` is
  offered with the Bonett-Wright variance `(1 + r^2 / 2) / (n - 3)`.
- Code reuse (paper Sec. 4 "Code reuse"): active codes, effective vocabulary exp(H), entropy
  in bits, concentration as the share of token occurrences taken by the most frequent 10% of
  the *used* codes and as the Herfindahl index sum p^2, and purity as the normalised mutual
  information between code and label (arithmetic-mean normalisation, as scikit-learn's
  default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
TEACHER_DTYPE_BITS = 16

# --------------------------------------------------------------------------- alignment


def cosine_per_patch(pred: np.ndarray, target: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Cosine between matching vectors along the last axis; shape = input shape minus last."""
    pred, target = _same_shape(pred, target)
    dot = np.sum(pred * target, axis=-1)
    norm = np.linalg.norm(pred, axis=-1) * np.linalg.norm(target, axis=-1)
    return dot / np.maximum(norm, eps)


def cosine(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean cosine similarity over every (image, patch) vector."""
    return float(np.mean(cosine_per_patch(pred, target)))


def r2_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Pooled R^2 with per-channel target means as baseline (see module docstring)."""
    stats = FieldStats()
    stats.update(pred, target)
    return stats.r2


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error over every scalar."""
    pred, target = _same_shape(pred, target)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


@dataclass
class FieldStats:
    """Streaming cosine / R^2 / RMSE over batches of (..., D) fields, exact in float64."""

    n_vectors: int = 0
    cos_sum: float = 0.0
    sq_err: float = 0.0
    sum_t: np.ndarray | None = None
    sum_t2: np.ndarray | None = None

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred, target = _same_shape(pred, target)
        d = target.shape[-1]
        p = pred.reshape(-1, d).astype(np.float64)
        t = target.reshape(-1, d).astype(np.float64)
        if self.sum_t is None:
            self.sum_t, self.sum_t2 = np.zeros(d), np.zeros(d)
        elif self.sum_t.shape[0] != d:
            raise ValueError(f"field width changed between batches: {self.sum_t.shape[0]} then {d}")
        self.n_vectors += p.shape[0]
        self.cos_sum += float(np.sum(cosine_per_patch(p, t)))
        self.sq_err += float(np.sum((p - t) ** 2))
        self.sum_t += t.sum(axis=0)
        self.sum_t2 += (t * t).sum(axis=0)

    @property
    def cos(self) -> float:
        return self.cos_sum / self.n_vectors if self.n_vectors else math.nan

    @property
    def rmse(self) -> float:
        if not self.n_vectors or self.sum_t is None:
            return math.nan
        return math.sqrt(self.sq_err / (self.n_vectors * self.sum_t.shape[0]))

    @property
    def r2(self) -> float:
        if not self.n_vectors or self.sum_t is None or self.sum_t2 is None:
            return math.nan
        ss_tot = float(np.sum(self.sum_t2 - self.sum_t**2 / self.n_vectors))
        if ss_tot <= 0:  # a constant target: R^2 is undefined
            return math.nan
        return 1.0 - self.sq_err / ss_tot

    def as_dict(self) -> dict[str, float]:
        return {"cos": self.cos, "r2": self.r2, "rmse": self.rmse}


class PerImageField:
    """The sums `FieldStats` keeps, per image, so cosine, R^2 and RMSE can be recomputed on
    any resample of the images (`over(idx)`): the bootstrap over images of `strop eval`."""

    def __init__(self) -> None:
        self.cos_sum: list[float] = []
        self.n_vec: list[int] = []
        self.sq_err: list[float] = []
        self.sum_t: list[np.ndarray] = []
        self.sum_t2: list[np.ndarray] = []
        self._arrays: tuple[np.ndarray, ...] | None = None

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add a batch of (B, P, D) fields, one image per leading index."""
        pred, target = _same_shape(pred, target)
        d = target.shape[-1]
        for p_img, t_img in zip(pred, target, strict=True):
            p, t = p_img.reshape(-1, d).astype(np.float64), t_img.reshape(-1, d).astype(np.float64)
            self.cos_sum.append(float(np.sum(cosine_per_patch(p, t))))
            self.n_vec.append(p.shape[0])
            self.sq_err.append(float(np.sum((p - t) ** 2)))
            self.sum_t.append(t.sum(axis=0))
            self.sum_t2.append((t * t).sum(axis=0))

    def over(self, idx: np.ndarray) -> dict[str, float]:
        """Cosine, R^2 and RMSE of the images `idx` (repeats count twice, as in a resample)."""
        if self._arrays is None or len(self._arrays[0]) != len(self.n_vec):
            self._arrays = tuple(
                np.asarray(a, dtype=np.float64)
                for a in (self.n_vec, self.sq_err, self.cos_sum, self.sum_t, self.sum_t2)
            )
        n_vecs, sq_errs, cos_sums, sums_t, sums_t2 = self._arrays
        n_vec = float(n_vecs[idx].sum())
        sq = float(sq_errs[idx].sum())
        sum_t = sums_t[idx].sum(axis=0)
        ss_tot = float(np.sum(sums_t2[idx].sum(axis=0) - sum_t**2 / n_vec))
        return {
            "cos": float(cos_sums[idx].sum()) / n_vec,
            "r2": 1.0 - sq / ss_tot if ss_tot > 0 else math.nan,
            "rmse": math.sqrt(sq / (n_vec * sum_t.shape[0])),
        }


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    level: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval of `statistic(idx)` over `n` items (images) resampled
    with replacement; (None, None) when there are fewer than 2 items."""
    if n < 2:
        return (None, None)
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return (None, None)
    lo, hi = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    return (float(lo), float(hi))


def ci_overlap(a: Sequence[float | None] | None, b: Sequence[float | None] | None) -> bool | None:
    """Whether two intervals overlap (a difference "within noise"); None when one is missing."""
    if not a or not b or None in a or None in b:
        return None
    return bool(a[0] <= b[1] and b[0] <= a[1])  # type: ignore[operator]


# --------------------------------------------------------------------------- codebook usage


def code_counts(codes: Sequence[np.ndarray] | np.ndarray, k: int) -> np.ndarray:
    """Usage count of each of the K codes over active tokens (negative entries are padding)."""
    if isinstance(codes, np.ndarray) and codes.ndim == 2:
        flat = codes.reshape(-1)
    else:
        flat = np.concatenate(
            [np.asarray(c, dtype=np.int64).reshape(-1) for c in codes] or [np.zeros(0, np.int64)]
        )
    flat = flat[flat >= 0].astype(np.int64)
    if flat.size and flat.max() >= k:
        raise ValueError(f"code {int(flat.max())} outside codebook of size K={k}")
    return np.bincount(flat, minlength=k)


def entropy(counts: np.ndarray, base: float = math.e) -> float:
    """Shannon entropy of a count vector (0 log 0 = 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return max(0.0, float(-(p * np.log(p)).sum() / math.log(base)))  # no -0.0 for one code


def codebook_usage(counts: np.ndarray) -> dict[str, float]:
    """CB% (share of codes used) and Eff% (exp(entropy) / K), both in percent."""
    k = len(counts)
    return {
        "cb_pct": 100.0 * float(np.count_nonzero(counts)) / k,
        "eff_pct": 100.0 * math.exp(entropy(counts)) / k,
    }


def code_reuse_stats(counts: np.ndarray, top_share: float = 0.1) -> dict[str, float]:
    """Active codes, effective vocabulary, entropy (bits), concentration (top share, HHI)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    used = np.sort(counts[counts > 0])[::-1]
    n_top = max(1, math.ceil(top_share * len(used))) if len(used) else 0
    p = used / total if total else used
    return {
        "active_codes": int(len(used)),
        "effective_vocab": math.exp(entropy(counts)),
        "entropy_bits": entropy(counts, base=2),
        "top10_share": float(used[:n_top].sum() / total) if total else math.nan,
        "herfindahl": float(np.sum(p**2)) if total else math.nan,
    }


# --------------------------------------------------------------------------- labels


def contingency(
    a: Sequence | np.ndarray, b: Sequence | np.ndarray
) -> tuple[np.ndarray, list, list]:
    """Contingency table of two label sequences: (table[i, j], row labels, column labels)."""
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length: {len(a)} vs {len(b)}")
    rows, ai = np.unique(np.asarray(a), return_inverse=True)
    cols, bi = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((len(rows), len(cols)), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table, rows.tolist(), cols.tolist()


def mutual_information(table: np.ndarray) -> float:
    """Mutual information (nats) of a contingency table."""
    t = np.asarray(table, dtype=np.float64)
    n = t.sum()
    if n <= 0:
        return 0.0
    pij = t / n
    pi = pij.sum(axis=1, keepdims=True)
    pj = pij.sum(axis=0, keepdims=True)
    nz = pij > 0
    return float(np.sum(pij[nz] * np.log(pij[nz] / (pi @ pj)[nz])))


def nmi(a: Sequence | np.ndarray, b: Sequence | np.ndarray) -> float | None:
    """Normalised mutual information, MI / mean(H(a), H(b)).

    None (undefined, 0 / 0) when both sequences are constant or empty: a single object under a
    single code says nothing about purity, so it is not reported as a perfect 1.0. One
    constant sequence against a varied one gives 0.0 (MI is 0, the normaliser is not).
    """
    table, _, _ = contingency(a, b)
    ha, hb = entropy(table.sum(axis=1)), entropy(table.sum(axis=0))
    denom = 0.5 * (ha + hb)
    if denom <= 0:
        return None
    return float(min(1.0, max(0.0, mutual_information(table) / denom)))


# --------------------------------------------------------------------------- pixels


def ssim(img1: np.ndarray, img2: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Per-image SSIM for (B, C, H, W) or (C, H, W) arrays in [0, data_range]; returns (B,)."""
    from scipy.ndimage import gaussian_filter

    a, b = _same_shape(img1, img2)
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4:
        raise ValueError(f"ssim expects (B, C, H, W) images, got shape {a.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = SSIM_C1 * data_range**2, SSIM_C2 * data_range**2
    # sigma 1.5 truncated at 3.5 sigma = the 11x11 window of Wang et al.; no smoothing over B, C
    sigma, truncate, pad = (0, 0, 1.5, 1.5), 3.5, 5

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=sigma, truncate=truncate, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    smap = num / den
    h, w = smap.shape[-2:]
    if h > 2 * pad and w > 2 * pad:  # drop borders the window overhangs
        smap = smap[..., pad : h - pad, pad : w - pad]
    return smap.mean(axis=(1, 2, 3))


# --------------------------------------------------------------------------- bits


def bits_per_token(k: int) -> int:
    """Fixed-width index cost of one token from a codebook of K entries."""
    if k < 1:
        raise ValueError(f"codebook size must be >= 1, got {k}")
    return max(1, math.ceil(math.log2(k)))


def program_bits(lengths: np.ndarray, k: int) -> np.ndarray:
    """Bits of each program (length * ceil(log2 K))."""
    return np.asarray(lengths, dtype=np.int64) * bits_per_token(k)


def teacher_bits(n_patches: int, width: int, dtype_bits: int = TEACHER_DTYPE_BITS) -> int:
    """Bits of one image's teacher patch features stored at `dtype_bits` per value."""
    return int(n_patches) * int(width) * int(dtype_bits)


# --------------------------------------------------------------------------- correlation


@dataclass
class Correlation:
    """A correlation with its confidence interval; `note` says why a value is missing."""

    r: float
    ci: tuple[float, float]
    p_value: float
    n: int
    method: str
    note: str = ""
    extra: dict = field(default_factory=dict)


def _fisher_ci(r: float, n: int, level: float, var_scale: float = 1.0) -> tuple[float, float]:
    from scipy.stats import norm

    if n <= 3 or not math.isfinite(r):
        return (math.nan, math.nan)
    if abs(r) >= 1.0:
        return (r, r)
    z = math.atanh(r)
    half = norm.ppf(0.5 + level / 2) * math.sqrt(var_scale / (n - 3))
    return (math.tanh(z - half), math.tanh(z + half))


def _degenerate(x: np.ndarray, y: np.ndarray, method: str) -> Correlation | None:
    n = len(x)
    if n < 3:
        return Correlation(
            math.nan, (math.nan, math.nan), math.nan, n, method, f"needs n >= 3, got {n}"
        )
    if np.all(x == x[0]) or np.all(y == y[0]):
        which = "length" if np.all(x == x[0]) else "object count"
        return Correlation(
            math.nan,
            (math.nan, math.nan),
            math.nan,
            n,
            method,
            f"constant {which}: correlation undefined",
        )
    return None


def pearson(x: ArrayLike, y: ArrayLike, level: float = 0.95) -> Correlation:
    """Pearson r with a Fisher-z confidence interval."""
    from scipy.stats import pearsonr

    xs, ys = _xy(x, y)
    bad = _degenerate(xs, ys, "pearson")
    if bad:
        return bad
    res = pearsonr(xs, ys)
    r = float(res.statistic)
    return Correlation(
        r,
        _fisher_ci(r, len(xs), level),
        float(res.pvalue),
        len(xs),
        "pearson",
        extra={"ci": "fisher"},
    )


def spearman(
    x: ArrayLike,
    y: ArrayLike,
    level: float = 0.95,
    method: str = "bootstrap",
    n_boot: int = 2000,
    seed: int = 0,
) -> Correlation:
    """Spearman rho with a percentile-bootstrap (default) or Bonett-Wright Fisher CI."""
    from scipy.stats import rankdata, spearmanr

    xs, ys = _xy(x, y)
    bad = _degenerate(xs, ys, "spearman")
    if bad:
        return bad
    res = spearmanr(xs, ys)
    rho, n = float(res.statistic), len(xs)
    if method == "fisher":
        ci = _fisher_ci(rho, n, level, var_scale=1.0 + rho**2 / 2.0)
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        rx, ry = rankdata(xs[idx], axis=1), rankdata(ys[idx], axis=1)
        rx -= rx.mean(axis=1, keepdims=True)
        ry -= ry.mean(axis=1, keepdims=True)
        den = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
        ok = den > 0  # a resample of all-equal values has no correlation; drop it
        boots = (rx * ry).sum(1)[ok] / den[ok]
        lo, hi = (
            np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
            if boots.size
            else (math.nan,) * 2
        )
        ci = (float(lo), float(hi))
    else:
        raise ValueError(f"spearman CI method must be 'bootstrap' or 'fisher', got {method!r}")
    return Correlation(
        rho,
        ci,
        float(res.pvalue),
        n,
        "spearman",
        extra={"ci": method, "n_boot": n_boot if method == "bootstrap" else 0},
    )


def length_vs_objects(lengths: ArrayLike, n_objects: ArrayLike, seed: int = 0) -> dict:
    """The eval.json block: Pearson/Spearman with CIs over images whose object count is known."""
    length = np.asarray(lengths, dtype=np.float64)
    count = np.asarray(n_objects, dtype=np.float64)
    known = count >= 0
    p = pearson(length[known], count[known])
    s = spearman(length[known], count[known], seed=seed)
    out = {
        "pearson": _num(p.r),
        "pearson_ci": [_num(v) for v in p.ci],
        "pearson_p": _num(p.p_value),
        "spearman": _num(s.r),
        "spearman_ci": [_num(v) for v in s.ci],
        "spearman_p": _num(s.p_value),
        "spearman_ci_method": s.extra.get("ci", "bootstrap"),
        "n": int(known.sum()),
        "mean_length_by_objects": {
            str(int(c)): float(length[known][count[known] == c].mean())
            for c in np.unique(count[known])
        },
    }
    if p.note or s.note:
        out["note"] = p.note or s.note
    return out


# --------------------------------------------------------------------------- ridge probes


#: Penalties `fit_ridge_cv` chooses among, in units of the standardised features' n * var = n.
RIDGE_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4)


@dataclass
class Ridge:
    """A fitted ridge regression: features standardised with the training rows' mean and std
    (a constant column gets std 1), targets centred, the intercept never penalised. `alpha`
    has one penalty per target column (`fit_ridge_cv` picks each on the training rows).
    The one ridge of the toolkit: the sweep's count probe, the order probe's bag-of-codes
    control and the scene probes all fit through it. Checked against scikit-learn's
    `StandardScaler` + `Ridge` (tests/test_eval_scene_probes.py)."""

    mean: np.ndarray
    std: np.ndarray
    y_mean: np.ndarray
    weights: np.ndarray  # (D, T)
    alpha: np.ndarray  # (T,)
    #: fitted on a 1-D target: `predict` returns (n,)
    flat: bool = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, T) predictions (or (n,) when fitted on a 1-D target)."""
        out = ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.weights
        out = out + self.y_mean
        return out[:, 0] if self.flat else out


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return (x - mean) / std, mean, std


def _ridge_paths(xs: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, s, U^T y) of standardised `xs`: weights for penalty a are V diag(s/(s^2+a)) U^T y."""
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    return vt.T, s, u.T @ yc


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float | np.ndarray) -> Ridge:
    """Ridge of `y` (n,) or (n, T) on `x` (n, D) at penalty `alpha` (one, or one per target)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    flat = y.ndim == 1
    y2 = y[:, None] if flat else y
    xs, mean, std = _standardise(x)
    y_mean = y2.mean(axis=0)
    v, s, uty = _ridge_paths(xs, y2 - y_mean)
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (y2.shape[1],)).copy()
    weights = v @ ((s[:, None] / (s[:, None] ** 2 + a[None, :])) * uty)
    return Ridge(mean, std, y_mean, weights, a, flat)


def _cv_errors(x: np.ndarray, y: np.ndarray, a: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(len(a), T) mean squared out-of-fold error of each penalty of `a` for each target column
    of the float64 `y`, `folds`-fold cross-validation over the rows of the float64 `x` in a
    seeded order (the rows given: pass the training split only)."""
    y2 = y[:, None] if y.ndim == 1 else y
    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    sq = np.zeros((len(a), y2.shape[1]))
    for fold in np.array_split(order, min(folds, n)):
        train = np.setdiff1d(order, fold)
        xs, mean, std = _standardise(x[train])
        y_mean = y2[train].mean(axis=0)
        v, s, uty = _ridge_paths(xs, y2[train] - y_mean)
        xf = (x[fold] - mean) / std @ v  # (f, r)
        for i, alpha in enumerate(a):
            pred = xf @ ((s / (s**2 + alpha))[:, None] * uty) + y_mean
            sq[i] += ((pred - y2[fold]) ** 2).sum(axis=0)
    return sq / n


def fit_ridge_cv(
    x: np.ndarray,
    y: np.ndarray,
    alphas: Sequence[float] = RIDGE_ALPHAS,
    folds: int = 5,
    seed: int = 0,
    per_target: bool = True,
) -> Ridge:
    """`fit_ridge` at the penalty with the lowest cross-validated error on these rows (one per
    target column, or one for all when `per_target` is False); ties go to the larger penalty."""
    a = np.asarray(alphas, dtype=np.float64)
    x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    errors = _cv_errors(x64, y64, a, folds, seed)
    rev = errors[::-1]  # argmin takes the first minimum: scan from the largest penalty
    if per_target:
        chosen = a[::-1][np.argmin(rev, axis=0)]
    else:
        chosen = np.full(errors.shape[1], a[::-1][int(np.argmin(rev.sum(axis=1)))])
    return fit_ridge(x, y, chosen)


def r2_columns(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """R^2 of each column (NaN where the target is constant on these rows)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    ss_tot = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    ss_res = ((target - pred) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


def auc_columns(score: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of each column of `score` (n, T) for the binary `label`
    (n, T), ties counting half (the Mann-Whitney statistic); NaN where one class is absent."""
    from scipy.stats import rankdata

    label = np.asarray(label, dtype=bool)
    n_pos = label.sum(axis=0).astype(np.float64)
    n_neg = len(label) - n_pos
    ranks = rankdata(np.asarray(score, dtype=np.float64), axis=0)
    u = (ranks * label).sum(axis=0) - n_pos * (n_pos + 1) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


# --------------------------------------------------------------------------- helpers


def _num(v: float) -> float | None:
    """JSON has no NaN: missing values become null."""
    return None if v is None or not math.isfinite(v) else float(v)


def _xy(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(
            f"correlation needs two 1-D arrays of equal length, got {xs.shape} and {ys.shape}"
        )
    return xs, ys


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: prediction {a.shape} vs target {b.shape}")
    return a, b


def mean_ci(
    values: ArrayLike, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float | None, list[float] | None]:
    """Mean with a seeded percentile-bootstrap CI over the values; (None, None) when empty,
    and a zero-width interval for a single value."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return None, None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(x.mean()), [float(lo), float(hi)]
