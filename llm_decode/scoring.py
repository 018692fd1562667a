"""Scores of decoded scenes against the true ones (paper Appendix G, Table 16) and CLEVR AP.

Design decisions (the paper names its metrics but not their exact definitions, so each
choice is an explicit option, `ScoringOptions`, recorded in `summary.json`)
- Matching (`matching`): objects are paired one-to-one by the Hungarian algorithm
  (`scipy.optimize.linear_sum_assignment`), min(n_pred, n_true) pairs, on a cost of
  - `position`: Euclidean (x, y) distance;
  - `attributes`: the number of the four attributes that disagree, ties broken by distance
    (distance / 100 added, below one attribute since positions lie in [-3, 3]^2);
  - `joint`: share of attributes that disagree + distance / 6 (6 = the coordinate span), so
    one attribute weighs as much as a quarter of the ground's width;
  - `index`: no matching, the i-th predicted object against the i-th true one (what zipping
    the two lists computes).
  Extra and missing objects show up in the count error and in AP, not in the matched-pair
  metrics.
- Position error (`position_error`), over matched pairs with d = (dx, dy):
  - `coordinate`: MSE = mean(dx^2, dy^2), MAE = mean(|dx|, |dy|) (numpy's mean over the
    (pairs, 2) array);
  - `euclidean`: MSE = mean |d|^2, MAE = mean |d|;
  - `mixed`: MSE per coordinate, MAE Euclidean (what `np.mean((p - t) ** 2)` beside
    `np.mean(np.linalg.norm(p - t, axis=1))` computes). Of the three, only this one allows
    the paper's naive row, where MSE (3.84) < MAE^2 (4.93): Jensen's inequality gives
    MSE >= MAE^2 for the other two.
  The defaults (attributes, mixed, accuracy over true objects) are the reading nearest to
  Table 16's naive row on real CLEVR annotations (`llm_decode.calibration`,
  docs/TABLE16_CALIBRATION.md), which still overshoots both position errors.
- Positions outside the ground are clipped to it before scoring: x and y to [-3, 3]
  (`COORD_LIMIT`). A model's `"x": 1e308` is finite JSON but makes every distance infinite,
  which used to crash the matching ("cost matrix is infeasible") on every rerun; clipped, it
  scores as an object at the ground's edge: matched or not like any other, with a large (but
  bounded) position error, and no AP hit at a finite threshold unless the truth is there.
- Per image: count error |n_pred - n_true|; attribute accuracy (`attr_accuracy`) over
  color, shape, size, material:
  - `matched`: the share of (matched pair, attribute) that agree;
  - `true`: agreeing (matched pair, attribute) over (true object, attribute), so a true
    object left unmatched counts as wrong on all four;
  - `histogram`: no matching at all: per attribute, the overlap of the predicted and true
    value counts (sum over values of the smaller count) over the true objects. Run scores average the
  per-image values, so each test image weighs the same whatever its object count. Parse
  failures are counted apart and excluded from these means; an image whose prediction has no
  objects has no matched pairs and no attribute or position score.
- AP follows the CLEVR set-prediction protocol of Slot Attention (Locatello et al., 2020):
  predictions of all images ranked by confidence (1.0 unless the model gives one, ties kept in
  image order); a prediction is a true positive when some true object of its image has all
  four attributes equal and lies within the distance threshold (the nearest such object; one
  that was already claimed makes it a false positive); recall is over all true objects, so a
  parse failure costs recall; AP is the area under the interpolated precision-recall curve.
  Distances are on (x, y) only: z is set by size and shape, which a true positive already
  matches. AP does not depend on the options above.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llm_decode.schema import ATTRIBUTES, DecodedObject, DecodedScene
from strop.cli_options import Flag

AP_THRESHOLDS: tuple[float, ...] = (math.inf, 1.0, 0.5, 0.25, 0.125)
COORD_SPAN = 6.0  # CLEVR's x, y lie in [-3, 3]
COORD_LIMIT = COORD_SPAN / 2


def ground_xy(obj: DecodedObject) -> tuple[float, float]:
    """An object's (x, y) clipped to the ground, the only positions scoring sees."""
    return (
        min(max(obj.x, -COORD_LIMIT), COORD_LIMIT),
        min(max(obj.y, -COORD_LIMIT), COORD_LIMIT),
    )


Matching = Literal["position", "attributes", "joint", "index"]
PositionError = Literal["coordinate", "euclidean", "mixed"]
AttrAccuracy = Literal["matched", "true", "histogram"]
MATCHINGS: tuple[str, ...] = get_args(Matching)
ATTR_ACCURACIES: tuple[str, ...] = get_args(AttrAccuracy)
POSITION_ERRORS: tuple[str, ...] = get_args(PositionError)


class ScoringOptions(BaseModel):
    """How decoded scenes are scored (module docstring); recorded in `summary.json`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    matching: Annotated[Matching, Flag(kind=str)] = Field(
        "attributes", description="Hungarian cost (position, attributes, joint) or index order."
    )
    position_error: Annotated[PositionError, Flag(kind=str)] = Field(
        "mixed", description="MSE/MAE over coordinates, Euclidean distances, or mixed."
    )
    attr_accuracy: AttrAccuracy = Field(
        "true",
        description="Attribute accuracy over matched pairs, over true objects, or of histograms.",
    )


def threshold_key(threshold: float) -> str:
    """`inf`, `1`, `0.5`, ... as used for the `ap` keys of summary.json."""
    return "inf" if math.isinf(threshold) else f"{threshold:g}"


def match_objects(
    pred: DecodedScene, true: DecodedScene, matching: Matching = "position"
) -> list[tuple[int, int]]:
    """Hungarian matching under `matching`: (pred index, true index) pairs."""
    from scipy.optimize import linear_sum_assignment  # lazy: scipy.optimize costs 0.5 s to import

    if not pred.objects or not true.objects:
        return []
    if matching == "index":
        return [(i, i) for i in range(min(len(pred.objects), len(true.objects)))]
    p = np.array([ground_xy(o) for o in pred.objects])
    t = np.array([ground_xy(o) for o in true.objects])
    dist = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=-1)
    if matching == "position":
        cost = dist
    else:
        pa = np.array([o.attributes() for o in pred.objects])
        ta = np.array([o.attributes() for o in true.objects])
        wrong = (pa[:, None, :] != ta[None, :, :]).sum(-1).astype(np.float64)
        if matching == "attributes":
            cost = wrong + dist / 100.0
        elif matching == "joint":
            cost = wrong / len(ATTRIBUTES) + dist / COORD_SPAN
        else:
            raise ValueError(f"matching: expected one of {MATCHINGS}, got {matching!r}")
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def position_errors(diff: np.ndarray, kind: PositionError) -> tuple[float, float]:
    """(MSE, MAE) of (pairs, 2) position differences under `kind` (module docstring)."""
    diff = np.asarray(diff, dtype=np.float64).reshape(-1, 2)
    dist = np.linalg.norm(diff, axis=1)
    if kind == "coordinate":
        return float(np.mean(diff**2)), float(np.mean(np.abs(diff)))
    if kind == "euclidean":
        return float(np.mean(dist**2)), float(np.mean(dist))
    if kind == "mixed":
        return float(np.mean(diff**2)), float(np.mean(dist))
    raise ValueError(f"position_error: expected coordinate, euclidean or mixed, got {kind!r}")


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


def score_scene(
    pred: DecodedScene, true: DecodedScene, options: ScoringOptions | None = None
) -> SceneScore:
    """Per-image scores of one parsed prediction (see the module docstring)."""
    options = options or ScoringOptions()
    pairs = match_objects(pred, true, options.matching)
    count_err = abs(len(pred.objects) - len(true.objects))
    if not pairs:
        if options.attr_accuracy != "matched" and true.objects:  # nothing right, and said so
            zero = dict.fromkeys(ATTRIBUTES, 0.0)
            return SceneScore(count_err, 0, 0.0, zero, None, None)
        return SceneScore(count_err, 0, None, None, None, None)
    by_attr = attribute_accuracies(pred, true, pairs)[options.attr_accuracy]
    diff = np.array(
        [np.subtract(ground_xy(pred.objects[i]), ground_xy(true.objects[j])) for i, j in pairs]
    )
    mse, mae = position_errors(diff, options.position_error)
    return SceneScore(
        count_err=count_err,
        n_matched=len(pairs),
        attr_acc=float(np.mean(list(by_attr.values()))),
        attr_acc_by=by_attr,
        pos_mse=mse,
        pos_mae=mae,
    )


def attribute_accuracies(
    pred: DecodedScene, true: DecodedScene, pairs: Sequence[tuple[int, int]]
) -> dict[str, dict[str, float]]:
    """Per-attribute accuracy under each `AttrAccuracy` (module docstring), for `pairs`."""
    agree = {
        attr: sum(
            getattr(pred.objects[i], attr) == getattr(true.objects[j], attr) for i, j in pairs
        )
        for attr in ATTRIBUTES
    }
    n_true = max(len(true.objects), 1)
    histogram = {}
    for attr in ATTRIBUTES:
        p = Counter(getattr(o, attr) for o in pred.objects)
        t = Counter(getattr(o, attr) for o in true.objects)
        histogram[attr] = sum(min(p[v], t[v]) for v in t) / n_true
    return {
        "matched": {a: agree[a] / max(len(pairs), 1) for a in ATTRIBUTES},
        "true": {a: agree[a] / n_true for a in ATTRIBUTES},
        "histogram": histogram,
    }


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
                dist = math.dist(ground_xy(p), ground_xy(t))
                if dist < best_dist:
                    best, best_dist = j, dist
        hit = best is not None and (math.isinf(threshold) or best_dist < threshold)
        if hit and best is not None and (img, best) not in claimed:
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


def summarize_scores(
    preds: Sequence[DecodedScene | None],
    trues: Sequence[DecodedScene],
    options: ScoringOptions | None = None,
) -> dict:
    """Run-level scores: n, parse_fails, count_err, attr_acc(_by), pos_mse, pos_mae, ap, and
    `scoring` (the options they were computed under)."""
    options = options or ScoringOptions()
    scores = [
        score_scene(p, t, options) for p, t in zip(preds, trues, strict=True) if p is not None
    ]
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
        # No answer at all has no precision: null, not a measured 0.0.
        "ap": {
            threshold_key(t): average_precision(preds, trues, t) if scores else None
            for t in AP_THRESHOLDS
        },
        "scoring": options.model_dump(),
    }
