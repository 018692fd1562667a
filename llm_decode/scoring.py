"""Scores of decoded scenes against the true ones (paper Appendix G, Table 16) and CLEVR AP.

Design decisions (the paper names its metrics but not their exact definitions)
- Objects are matched one-to-one by the Hungarian algorithm on Euclidean (x, y) distance
  (`scipy.optimize.linear_sum_assignment`); min(n_pred, n_true) pairs. Extra and missing
  objects show up in the count error and in AP, not in the matched-pair metrics.
- Per image: count error |n_pred - n_true|; attribute accuracy = share of (matched object,
  attribute) pairs over color, shape, size, material that agree; position MSE and MAE = mean
  squared / absolute error over the x and y coordinates of matched pairs (per coordinate, as
  numpy would compute them). Run scores average the per-image values, so each test image
  weighs the same whatever its object count. Parse failures are counted apart and excluded
  from these means; an image whose prediction has no objects has no matched pairs and no
  attribute or position score.
- AP follows the CLEVR set-prediction protocol of Slot Attention (Locatello et al., 2020):
  predictions of all images ranked by confidence (1.0 unless the model gives one, ties kept in
  image order); a prediction is a true positive when some true object of its image has all
  four attributes equal and lies within the distance threshold (the nearest such object; one
  that was already claimed makes it a false positive); recall is over all true objects, so a
  parse failure costs recall; AP is the area under the interpolated precision-recall curve.
  Distances are on (x, y) only: z is set by size and shape, which a true positive already
  matches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from llm_decode.schema import ATTRIBUTES, DecodedScene

AP_THRESHOLDS: tuple[float, ...] = (math.inf, 1.0, 0.5, 0.25, 0.125)


def threshold_key(threshold: float) -> str:
    """`inf`, `1`, `0.5`, ... as used for the `ap` keys of summary.json."""
    return "inf" if math.isinf(threshold) else f"{threshold:g}"


def match_objects(pred: DecodedScene, true: DecodedScene) -> list[tuple[int, int]]:
    """Hungarian matching on (x, y) distance: (pred index, true index) pairs."""
    from scipy.optimize import linear_sum_assignment  # lazy: scipy.optimize costs 0.5 s to import

    if not pred.objects or not true.objects:
        return []
    p = np.array([o.xy for o in pred.objects])
    t = np.array([o.xy for o in true.objects])
    cost = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


@dataclass
class SceneScore:
    count_err: int
    n_matched: int
    attr_acc: float | None
    attr_acc_by: dict[str, float] | None
    pos_mse: float | None
    pos_mae: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def score_scene(pred: DecodedScene, true: DecodedScene) -> SceneScore:
    """Per-image scores of one parsed prediction (see the module docstring)."""
    pairs = match_objects(pred, true)
    count_err = abs(len(pred.objects) - len(true.objects))
    if not pairs:
        return SceneScore(count_err, 0, None, None, None, None)
    by_attr = {
        attr: float(
            np.mean(
                [getattr(pred.objects[i], attr) == getattr(true.objects[j], attr) for i, j in pairs]
            )
        )
        for attr in ATTRIBUTES
    }
    diff = np.array([np.subtract(pred.objects[i].xy, true.objects[j].xy) for i, j in pairs])
    return SceneScore(
        count_err=count_err,
        n_matched=len(pairs),
        attr_acc=float(np.mean(list(by_attr.values()))),
        attr_acc_by=by_attr,
        pos_mse=float(np.mean(diff**2)),
        pos_mae=float(np.mean(np.abs(diff))),
    )


def average_precision(
    preds: Sequence[DecodedScene | None],
    trues: Sequence[DecodedScene],
    threshold: float,
    confidences: Sequence[Sequence[float]] | None = None,
) -> float:
    """CLEVR set-prediction AP at one (x, y) distance threshold (`math.inf`: any distance)."""
    if len(preds) != len(trues):
        raise ValueError(f"average_precision: {len(preds)} predictions for {len(trues)} scenes")
    n_true = sum(len(t.objects) for t in trues)
    detections = []  # (confidence, image, object)
    for img, pred in enumerate(preds):
        for obj in range(len(pred.objects) if pred is not None else 0):
            conf = confidences[img][obj] if confidences is not None else 1.0
            detections.append((float(conf), img, obj))
    if n_true == 0 or not detections:
        return 0.0
    order = sorted(range(len(detections)), key=lambda d: -detections[d][0])  # stable
    claimed: set[tuple[int, int]] = set()
    tp = np.zeros(len(order))
    for rank, d in enumerate(order):
        _, img, obj = detections[d]
        p = preds[img].objects[obj]  # type: ignore[union-attr]
        best, best_dist = None, math.inf
        for j, t in enumerate(trues[img].objects):
            if p.attributes() == t.attributes():
                dist = math.dist(p.xy, t.xy)
                if dist < best_dist:
                    best, best_dist = j, dist
        hit = best is not None and (math.isinf(threshold) or best_dist < threshold)
        if hit and (img, best) not in claimed:
            claimed.add((img, best))
            tp[rank] = 1
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, len(order) + 1)
    recall = cum_tp / n_true
    return _area_under_pr(precision, recall)


def _area_under_pr(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-style AP: precision made monotone from the right, summed over recall steps."""
    prec = np.concatenate([[0.0], precision, [0.0]])
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.nonzero(rec[1:] != rec[:-1])[0]
    return float(np.sum((rec[steps + 1] - rec[steps]) * prec[steps + 1]))


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize_scores(preds: Sequence[DecodedScene | None], trues: Sequence[DecodedScene]) -> dict:
    """Run-level scores: n, parse_fails, count_err, attr_acc(_by), pos_mse, pos_mae, ap."""
    scores = [score_scene(p, t) for p, t in zip(preds, trues, strict=True) if p is not None]
    by_attr = {
        attr: _mean([s.attr_acc_by[attr] if s.attr_acc_by else None for s in scores])
        for attr in ATTRIBUTES
    }
    return {
        "n": len(trues),
        "parse_fails": sum(p is None for p in preds),
        "count_err": _mean([s.count_err for s in scores]),
        "attr_acc": _mean([s.attr_acc for s in scores]),
        "attr_acc_by": by_attr,
        "pos_mse": _mean([s.pos_mse for s in scores]),
        "pos_mae": _mean([s.pos_mae for s in scores]),
        "ap": {threshold_key(t): average_precision(preds, trues, t) for t in AP_THRESHOLDS},
    }
