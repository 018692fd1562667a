"""The calibration of `--length-mode quality:EPS`: does the quality head deliver the EPS it is
asked for? eval.json's `quality_control` block (the key keeps its name).

For each requested EPS (>= 5 of them), on the evaluated split: the mean alignment error the
eps-conditioned head's lengths actually reach and their mean length, and the same for
`search:EPS` (the shortest prefix with error <= EPS, found by interpreting every length),
plus how long each takes per image. `strop eval` adds the block for every run trained with
`model.quality_head=true`; `strop report` draws requested vs achieved EPS (calibration).

Design decisions
- One pass over the split computes each image's error at every prefix length (the search's
  own work, `strop.model.length_modes.search_lengths`); achieved errors of both modes are read
  from that matrix, so they are the same quantity the search thresholds.
- Default EPS values: 6 points at which `search:EPS`'s mean length on the split steps evenly
  from L_max down to L_min (at 1/7, 2/7, ... of the way), read off the same error matrix, so
  the defaults fit whatever teacher the run uses and span the EPS range where the length
  actually moves; `quality_eps` overrides them. (EPS log-spaced between the mean errors at
  L_max and at L_min, our first rule, fell where the curves are flat: on a quickstart-scale
  run the search's mean length moved only from 8.1 to 7.6 tokens of 16 over all 6 values, and
  the achieved errors differed in the fourth decimal.)
- Streamed: each batch leaves behind only its images' errors at every length and the head's
  predicted error curves (CPU); the features and tokens of the split are never held at once.
- Timing excludes the teacher and generator, which both modes share: `quality` is the head's
  forward plus one interpreter pass at the chosen lengths; `search` is the interpreter at all
  L_max - L_min + 1 lengths. Neither cost depends on EPS (the interpreter is masked to static
  shapes), so each is timed once per batch (quality at the batch's median error).
  The ratio is search time / quality time; passes are interpreter passes per image. Each timed
  block waits for the device before and after (`strop.devices.DeviceTimer`): on CUDA the
  calls only queue kernels, and timing them alone measured the launches.
- `*_reached` is the share of images whose error at the chosen length is <= EPS: the mean
  error hides it (it is dominated by each image's floor), and for the search it is the most
  any length could give, so the quality head's share against it says how often one pass
  stops short.
- `constant_length` (per EPS row; `strop.baselines` records): the head's lengths
  against one constant length for every image at the same mean length (floor and ceil of the
  head's mean, mixed so the mean matches exactly; which images get the longer one is a
  seeded draw, since a constant policy cannot look at the image), read from the same error
  matrix: `reached` (share of images reaching EPS, paired per image) and `error` (mean
  alignment error, lower is better). A head that ranks hard images but does not beat this
  baseline has not shown that its per-image lengths help.
- `spearman_requested_vs_achieved` is Spearman's rho between requested EPS and the head's
  achieved mean error over the EPS values (monotone calibration); `length_abs_diff_mean` is
  the mean per-image |L_quality - L_search|.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from strop import metrics
from strop.baselines import compare_means
from strop.devices import DeviceTimer

if TYPE_CHECKING:
    import torch

    from strop.model import Strop


def default_eps(errors: np.ndarray, l_min: int, n: int = 6) -> list[float]:
    """`n` EPS values where the search's mean length over `errors` (images x lengths) passes
    evenly spaced points between its longest (L_max) and shortest (L_min) answers."""
    import torch

    from strop.model.quality_head import shortest_reaching

    matrix = torch.from_numpy(np.asarray(errors, dtype=np.float64))
    lo, hi = max(float(matrix.min()), 1e-8), max(float(matrix.max()), 1e-8)
    grid = np.geomspace(lo, hi * (1 + 1e-9), 512)
    means = np.array([float(shortest_reaching(matrix, e, l_min).double().mean()) for e in grid])
    targets = np.linspace(means[0], means[-1], n + 2)[1:-1]
    # mean length is non-increasing in EPS: the first grid point at or under each target
    picks = [grid[min(int(np.argmax(means <= t)), len(grid) - 1)] for t in targets]
    return [float(v) for v in picks]


def constant_lengths(lengths: np.ndarray, seed: int = 0) -> np.ndarray:
    """One length for every image at the mean of `lengths`: floor and ceil of the mean, the
    ceil given to a seeded random round(frac * n) images so the means match to 1/n."""
    n = len(lengths)
    mean = float(np.mean(lengths))
    low = int(np.floor(mean))
    out = np.full(n, low, dtype=np.int64)
    longer = int(round((mean - low) * n))
    out[np.random.default_rng(seed).permutation(n)[:longer]] += 1
    return out


class QualityCalibration:
    """eval.json's `quality_control` block, gathered batch by batch (`update`) while the split
    streams past: what it keeps of each image is its error at every prefix length and the
    head's predicted error curve (on the CPU, L_max - L_min + 1 numbers each), never the
    features or tokens, so the split need not fit on the device. `result` answers every EPS
    from them (the defaults need the whole error matrix, hence the two steps)."""

    def __init__(self, model: Strop, w_mse: float, eps_values: Sequence[float] | None = None):
        self.model, self.w_mse = model, w_mse
        self.eps_values = [float(e) for e in eps_values] if eps_values else None
        self.errors: list[np.ndarray] = []
        self.curves: list[torch.Tensor] = []
        self.search_time, self.quality_time = DeviceTimer(), DeviceTimer()
        self.device: torch.device | None = None  # where the batches came from

    def update(self, feats: torch.Tensor, tokens: torch.Tensor) -> None:
        """One batch of teacher features (B, P, D) and full-length tokens (B, L_max, d)."""
        import torch

        from strop.model.length_modes import search_lengths

        model, l_min = self.model, self.model.cfg.l_min
        with torch.no_grad(), self.search_time.measure(feats.device):
            _, errors = search_lengths(model, feats, tokens, float("inf"), self.w_mse, l_min)
        # the quality path at one EPS: the interpreter is masked to static shapes, so its cost
        # does not depend on EPS (as the search's does not); timed once per batch
        eps = errors.median()
        with torch.no_grad(), self.quality_time.measure(feats.device):
            curve = model.predict_error_curve(feats)
            model.interpret_tokens(tokens, self._lengths(curve, eps))
        self.errors.append(errors.cpu().numpy())
        self.curves.append(curve.cpu())
        self.device = feats.device

    def _lengths(self, curve: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """`Strop.quality_lengths` from the head's curve (B, n), on the curve's device."""
        import torch

        assert self.model.quality_head is not None  # predict_error_curve refused otherwise
        return self.model.quality_head.lengths(curve, torch.as_tensor(eps, device=curve.device))

    def quality_lengths(self, eps: float) -> np.ndarray:
        """Every image's `quality:EPS` length, computed on the model's device as `Strop.encode`
        does (the curve goes back unchanged, so the lengths are the same)."""
        return np.concatenate(
            [self._lengths(curve.to(self.device), eps).cpu().numpy() for curve in self.curves]
        )

    def result(self) -> dict[str, Any]:
        """The block; see the module."""
        l_min, l_max = self.model.cfg.l_min, self.model.cfg.l_max
        matrix = np.concatenate(self.errors)  # (n, L_max - l_min + 1)
        n_images = len(matrix)
        eps_list = self.eps_values or default_eps(matrix, l_min)
        rows = [calibration_row(matrix, self.quality_lengths(eps), eps, l_min) for eps in eps_list]
        quality_per_image = self.quality_time.seconds / max(1, n_images)
        search_per_image = self.search_time.seconds / max(1, n_images)
        rho = metrics.spearman(eps_list, [r["quality_error_mean"] for r in rows]).r
        return {
            "n_images": n_images,
            "eps_source": "given"
            if self.eps_values
            else "where search:EPS's mean length steps evenly from L_max to L_min",
            "rows": rows,
            "spearman_requested_vs_achieved": float(rho) if np.isfinite(rho) else None,
            "quality_passes": 1,
            "search_passes": l_max - l_min + 1,
            "quality_seconds_per_image": quality_per_image,
            "search_seconds_per_image": search_per_image,
            "search_over_quality_time": search_per_image / max(quality_per_image, 1e-12),
            "timing": "teacher and generator excluded (shared by both modes)",
        }


def calibration_row(matrix: np.ndarray, q: np.ndarray, eps: float, l_min: int) -> dict[str, Any]:
    """One EPS row: the head's lengths `q` against the search's and a constant length's, all
    read from the error matrix (images x lengths from `l_min`)."""
    import torch

    from strop.model.quality_head import shortest_reaching

    rows_idx = np.arange(len(matrix))
    s = shortest_reaching(torch.from_numpy(matrix), eps, l_min).numpy()
    c = constant_lengths(q, seed=0)
    q_err, c_err = matrix[rows_idx, q - l_min], matrix[rows_idx, c - l_min]
    return {
        "eps": eps,
        "quality_length_mean": float(q.mean()),
        "quality_error_mean": float(q_err.mean()),
        "quality_reached": float((q_err <= eps).mean()),
        "search_length_mean": float(s.mean()),
        "search_error_mean": float(matrix[rows_idx, s - l_min].mean()),
        "search_reached": float((matrix[rows_idx, s - l_min] <= eps).mean()),
        "length_abs_diff_mean": float(np.abs(q - s).mean()),
        "constant_length_mean": float(c.mean()),
        "constant_length": {
            "reached": compare_means(
                q_err <= eps, c_err <= eps, name="constant_length", metric="reached"
            ),
            "error": compare_means(
                q_err, c_err, name="constant_length", metric="error", higher_is_better=False
            ),
        },
    }


def quality_calibration(
    model: Strop,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    w_mse: float,
    eps_values: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The block for `batches` of (teacher features, full-length tokens), one at a time."""
    calibration = QualityCalibration(model, w_mse, eps_values)
    for feats, tokens in batches:
        calibration.update(feats, tokens)
    return calibration.result()
