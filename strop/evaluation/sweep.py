"""Length-quality curves of a trained run: `strop eval RUN --sweep` -> `RUN/sweep.json`.

For every prefix length N of the grid (default L_min..L_max, `--sweep-lengths` for a coarser
one) the split is interpreted at exactly N tokens per image (`--length-mode prefix:N`) and
scored: alignment with the teacher (cos, R^2, RMSE, the mean alignment error that the oracle
and `search:EPS` use), the pixel probe's SSIM and LPIPS (when the run has the probe and, for
LPIPS, its weights), bits per image, and how well length-N programs predict the object count.
Three operating points are placed on the same axes: `head`, `fixed` and `search:EPS`.

Design decisions
- One pass over the split: the teacher and the generator run once per batch and every N
  reads the same full-length tokens through the masked interpreter (`interpret_tokens`, the
  same call the search makes; masked == truncated is a model invariant).
- Count prediction (`count_probe_r2`): a linear probe, not the length-vs-objects statistics
  (a fixed N has no length variation to correlate). Ridge regression of the object count from
  the interpreted field mean-pooled over patches, features standardised on each training fold,
  alpha = the number of features (our choice: a fixed, scale-free shrinkage, no tuning on the
  test folds), 5-fold cross-validation in a seeded order; the value is R^2 of the out-of-fold
  predictions. Null when fewer than 10 images carry an object count.
- Operating points are full `evaluate_run` passes (nothing written) in those modes, so their
  numbers are exactly what `strop eval --length-mode ...` reports. `search:EPS` defaults to
  EPS = the mean alignment error the head's own lengths reach on the split: the search is
  asked for the head's quality, so the two lengths compare at equal error.
- Bits per image at N is N * ceil(log2 K) (`strop.metrics.program_bits`), as eval.json.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop import metrics
from strop.evaluation.batch_encoding import encode_batch
from strop.evaluation.run_inputs import ReadArgs, Reading, progress_batches
from strop.model.length_modes import LengthMode, LengthModeError
from strop.output_unit import check_writable
from strop.provenance import write_json_of_weights
from strop.runs import RunFolder

if TYPE_CHECKING:
    import torch
    from typing_extensions import Unpack

    from strop.evaluation.lpips import LPIPS
    from strop.model.network import Strop

SWEEP_FILE = "sweep.json"
COUNT_PROBE = (
    "5-fold cross-validated ridge regression (standardised features, alpha = feature count) "
    "of the object count from the interpreted field mean-pooled over patches; R^2 of the "
    "out-of-fold predictions"
)


#: One length as typed: ASCII digits (int() would also take "1_0" and non-ASCII digits).
_DIGITS = re.compile(r"[0-9]+")


class SweepLengthsError(LengthModeError):
    """A `--sweep-lengths` value that cannot be used (exit 2)."""


def parse_sweep_lengths(text: str | None, l_min: int, l_max: int) -> list[int]:
    """`None` -> L_min..L_max; else comma-separated integers (`a-b` ranges allowed) in range,
    each checked before it is expanded (a typo like 1-100000000000 must not build a set of
    10^11 lengths), duplicates dropped, sorted."""
    if text is None:
        return list(range(l_min, l_max + 1))
    where = f"--sweep-lengths {text!r}" if not str(text).strip() else f"--sweep-lengths {text}"
    expected = "expected integers or ranges like 1,2,4,8-12"
    values: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not _DIGITS.fullmatch(lo) or (sep and not _DIGITS.fullmatch(hi)):
            raise SweepLengthsError(f"{where}: {expected}, got {part!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if first > last:
            raise SweepLengthsError(f"{where}: range {part} is empty (write it low-high)")
        bad = first if not l_min <= first <= l_max else last if not l_min <= last <= l_max else None
        if bad is not None:
            raise SweepLengthsError(
                f"{where}: lengths must lie in [L_min, L_max] = [{l_min}, {l_max}], got {bad}"
            )
        values.update(range(first, last + 1))
    return sorted(values)


def count_probe_r2(
    features: np.ndarray, counts: np.ndarray, folds: int = 5, seed: int = 0
) -> float | None:
    """Out-of-fold R^2 of a ridge probe of `counts` (n,) from `features` (n, D); see module."""
    known = counts >= 0
    x, y = features[known].astype(np.float64), counts[known].astype(np.float64)
    if len(y) < 10 or float(y.var()) == 0.0:
        return None
    order = np.random.default_rng(seed).permutation(len(y))
    predicted = np.empty_like(y)
    alpha = float(x.shape[1])
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        predicted[fold] = metrics.fit_ridge(x[train], y[train], alpha).predict(x[fold])
    return float(1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))


def sweep_run(
    run_dir: str | os.PathLike[str],
    split: str = "val",
    lengths: str | None = None,
    search_eps: float | None = None,
    progress: bool = True,
    lpips: bool | None = None,
    write: bool = True,
    **read: Unpack[ReadArgs],
) -> dict[str, Any]:
    """Score every prefix length of the grid and the three operating points; writes
    RUN/sweep.json (unless `write=False`) and returns its dict. `read`: the dataset, batches,
    limit, device and checkpoint (`run_inputs.ReadArgs`), the operating points' too."""
    from strop.evaluation.evaluate import lpips_network

    if search_eps is not None and not (search_eps > 0 and math.isfinite(search_eps)):
        raise LengthModeError(f"--sweep-eps {search_eps}: EPS must be a positive number")
    run, reading = RunFolder(Path(run_dir)), Reading(**read)
    model, info, dev = reading.model(run.path)
    if write:
        check_writable(run.path / SWEEP_FILE)  # before the encode of every length, not after it
    mc = info.model
    grid = parse_sweep_lengths(lengths, mc.l_min, mc.l_max)
    loader = reading.loader(run.path, info, split)
    perceptual, lpips_info = lpips_network(
        lpips, None, None, info.pixel_decoder, mc.image_size, dev
    )
    scores = LengthScores(model, grid, info.pixel_decoder, perceptual)
    for batch in progress_batches(loader, f"sweep {run.name} [{len(grid)} lengths]", progress):
        scores.update(batch["image"].to(dev), batch)
    head_error = float(np.concatenate(scores.head_errors).mean())
    eps = search_eps if search_eps is not None else head_error
    evaluate_options = {**read, "lpips": lpips if perceptual is not None else False}
    points = operating_points(run.path, split, eps, evaluate_options)
    points["head"]["align_error"] = head_error
    sweep = {
        "run": run.name,
        "split": split,
        "n_images": len(scores.n_objects),
        "checkpoint": str(reading.checkpoint),
        "weights": info.weights,
        "teacher": mc.teacher,
        "k": mc.k,
        "l_min": mc.l_min,
        "l_max": mc.l_max,
        "lengths": grid,
        "count_probe": COUNT_PROBE,
        "search_eps_source": "--sweep-eps" if search_eps is not None else "head mean align error",
        **lpips_info,
        "rows": scores.rows(),
        "operating_points": points,
    }
    if write:
        write_json_of_weights(
            run.path / SWEEP_FILE,
            sweep,
            run.path,
            info.weights["checkpoint_sha256"],
            "the sweep",
            info.weights_file,
        )
    return sweep


class LengthScores:
    """Every prefix length of the grid scored on one pass over the split (`update` per batch,
    `rows` at the end), plus the alignment error the head's own lengths reach."""

    def __init__(self, model: Strop, grid: list[int], use_pixels: bool, perceptual: LPIPS | None):
        self.model, self.grid = model, grid
        self.use_pixels, self.perceptual = use_pixels, perceptual
        self.stats = {n: metrics.FieldStats() for n in grid}
        self.errors: dict[int, list[np.ndarray]] = {n: [] for n in grid}
        self.pooled: dict[int, list[np.ndarray]] = {n: [] for n in grid}
        self.ssims: dict[int, list[np.ndarray]] = {n: [] for n in grid}
        self.lpips_values: dict[int, list[np.ndarray]] = {n: [] for n in grid}
        self.head_errors: list[np.ndarray] = []
        self.n_objects: list[int] = []

    def update(self, images: torch.Tensor, batch: dict[str, Any]) -> None:
        """One batch of images (on the model's device) with its loader row."""
        import torch

        from strop.evaluation.evaluate import probe_target
        from strop.model.losses import align_error

        model, mc = self.model, self.model.cfg
        enc = encode_batch(model, images, LengthMode("head"), mc.w_mse, mc.l_min)
        with torch.no_grad():
            head_field = model.interpret_tokens(enc.tokens, enc.lengths)
            self.head_errors.append(
                align_error(head_field, enc.feats, mc.w_mse).float().cpu().numpy()
            )
            for n in self.grid:
                field = model.interpret_tokens(enc.tokens, torch.full_like(enc.lengths, n))
                self.stats[n].update(field.float().cpu().numpy(), enc.feats.float().cpu().numpy())
                self.errors[n].append(align_error(field, enc.feats, mc.w_mse).float().cpu().numpy())
                self.pooled[n].append(field.float().mean(dim=1).cpu().numpy())
                if self.use_pixels:
                    recon = model.decode_pixels(field).float().clamp(0, 1)
                    target = probe_target(images, recon)
                    self.ssims[n].append(metrics.ssim(recon.cpu().numpy(), target.cpu().numpy()))
                    if self.perceptual is not None:
                        self.lpips_values[n].append(self.perceptual(recon, target).cpu().numpy())
        self.n_objects += [int(v) for v in batch["n_objects"]]

    def rows(self) -> list[dict[str, Any]]:
        """sweep.json's `rows`, one per length of the grid."""
        counts = np.asarray(self.n_objects)
        k = self.model.cfg.k
        return [
            {
                "n": n,
                "cos": _finite(self.stats[n].cos),
                "r2": _finite(self.stats[n].r2),
                "rmse": _finite(self.stats[n].rmse),
                "align_error": float(np.concatenate(self.errors[n]).mean()),
                "ssim": _mean(self.ssims[n]),
                "lpips": _mean(self.lpips_values[n]),
                "bits_per_image": float(metrics.program_bits(np.array([n]), k)[0]),
                "count_probe_r2": count_probe_r2(np.concatenate(self.pooled[n]), counts),
            }
            for n in self.grid
        ]


def operating_points(
    run_path: Path, split: str, eps: float, evaluate_options: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """`head`, `fixed` and `search:EPS` as `strop eval` scores them (nothing written)."""
    from strop.evaluation.evaluate import evaluate_run

    points = {}
    for mode in ("head", "fixed", f"search:{eps:g}"):
        result = evaluate_run(
            run_path, split, mode, progress=False, write=False, **evaluate_options
        )
        points[mode.split(":")[0]] = _operating_point(result)
    points["search"]["eps"] = eps
    return points


def _operating_point(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("length_mode", "length_mean", "bits_per_image", "cos", "r2", "rmse", "ssim", "lpips")
    return {key: result.get(key) for key in keys}


def _mean(parts: list[np.ndarray]) -> float | None:
    return float(np.concatenate(parts).mean()) if parts else None


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
