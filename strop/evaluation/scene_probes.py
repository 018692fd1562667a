"""Do the programs carry the scene? Linear probes from the codes, beside their baselines.

Probes are fitted on the TRAIN split's programs and scenes and scored on VAL (never on the
images they score), each headline beside the baselines it must beat, as comparison records
(`strop.baselines.compare`, paired bootstrap over val images):

- `attribute_counts`: the 15 CLEVR attribute counts of a scene (objects of each of the 8
  colours, 3 shapes, 2 materials, 2 sizes; the vocabularies of `strop.scenes`). Headline =
  R^2 on val, the mean over the 15 counts (a count constant on val is left out of the mean).
- `object_count`: the number of objects, R^2 on val.
- `presence`: whether each of the 15 attribute values occurs in the scene; mean AUC over
  the 15, each ranked by the count probe's predicted count of that value (a ridge on the 0/1
  indicator ranks worse: presence is not linear in the counts a program can spell).
- `nearest_neighbour`: the scene of the nearest train program (cosine of code-count
  vectors, ties by edit distance: the knn decoder's `KnnIndex`) against the scene of a seeded
  random train image (`random_shot`), in objects per attribute: the mean absolute count
  error over the 15 attribute counts, per val image (lower is better).

Feature sets: `codes` (each code's count in the program plus the program's length; the
headline), `length_only` (the length alone, a baseline: the length head reads the teacher
directly, so length can carry the object count without the codes carrying anything), and
`teacher_pooled` (the teacher's patch features mean-pooled over the image: what the codes
could keep at best; reported as a ceiling, with the codes' gap to it as the record's
negative advantage).

Design decisions
- One ridge (`strop.metrics.fit_ridge_cv`): standardised features, an unpenalised
  intercept, the penalty chosen per target by 5-fold cross-validation on TRAIN only among
  `strop.metrics.RIDGE_ALPHAS`.
- `probe_run(run_dir)` is the standalone entry: it encodes the run's train and val splits
  (the run's length mode, or `length_mode`) and returns the block; `strop eval` writes the
  same block as `eval.json["scene_probes"]`, or `null` with `scene_probes_note` when the
  split lacks scenes.
- Images without a scene (`scene` "") are left out; a split with fewer than `MIN_TRAIN`
  scenes in train, or none in val, gets no probes (`None`, and the reason).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop import metrics
from strop.baselines import compare, compare_means
from strop.scenes import COLORS, MATERIALS, SHAPES, SIZES

if TYPE_CHECKING:
    from strop.evaluation.batch_encoding import EncodedBatch
    from strop.model.pretrained import TokenizerInfo

#: (attribute, its values) in the order of the 15 count targets.
VOCABULARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("color", COLORS),
    ("shape", SHAPES),
    ("material", MATERIALS),
    ("size", SIZES),
)
TARGETS: tuple[str, ...] = tuple(f"{a}={v}" for a, values in VOCABULARIES for v in values)
#: Fewest train scenes the probes are fitted on (5-fold CV needs a few per fold).
MIN_TRAIN = 10
METHOD = (
    "ridge (standardised features, unpenalised intercept, penalty per target by 5-fold CV on "
    "the train split) fitted on train programs, scored on val"
)


def scene_counts(scene: str | dict[str, Any]) -> np.ndarray:
    """The 15 attribute counts (`TARGETS` order) of a scene (its JSON text or dict)."""
    data = json.loads(scene) if isinstance(scene, str) else scene
    out = np.zeros(len(TARGETS), dtype=np.float64)
    index = {name: i for i, name in enumerate(TARGETS)}
    for obj in data.get("objects", []):
        for attr, _ in VOCABULARIES:
            out[index[f"{attr}={obj[attr]}"]] += 1
    return out


@dataclass
class ProbeSplit:
    """One split's programs, scenes and teacher features, gathered batch by batch.

    `field_sum` (P, D) accumulates the teacher fields (float64) so the average teacher field
    of the split (`mean_field`) comes from the same pass."""

    codes: list[np.ndarray] = field(default_factory=list)
    scenes: list[str] = field(default_factory=list)
    pooled: list[np.ndarray] = field(default_factory=list)
    field_sum: np.ndarray | None = None
    n_fields: int = 0
    #: keep the full teacher fields (fp16) of the first this many images (`fields`)
    keep_fields: int = 0
    fields: list[np.ndarray] = field(default_factory=list)

    def update(self, enc: EncodedBatch, scenes: Sequence[str]) -> None:
        """One encoded batch (`strop.evaluation.batch_encoding.encode_batch`) and its scenes' JSON."""
        lengths = enc.lengths.cpu().numpy()
        for row, n in zip(enc.codes.cpu().numpy(), lengths, strict=True):
            self.codes.append(row[: int(n)].astype(np.int64))
        feats = enc.feats.float().cpu().numpy().astype(np.float64)
        self.pooled.append(feats.mean(axis=1))
        total = feats.sum(axis=0)
        self.field_sum = total if self.field_sum is None else self.field_sum + total
        room = self.keep_fields - sum(len(f) for f in self.fields)
        if room > 0:
            self.fields.append(feats[:room].astype(np.float16))
        self.n_fields += len(feats)
        self.scenes += [s or "" for s in scenes]

    @property
    def mean_field(self) -> np.ndarray | None:
        """(P, D) average teacher field over the split's images."""
        return None if self.field_sum is None else self.field_sum / self.n_fields

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.codes], dtype=np.int64)

    def known(self) -> np.ndarray:
        """Indices of the images that carry a scene."""
        return np.array([i for i, s in enumerate(self.scenes) if s], dtype=np.int64)


def code_features(codes: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(N, K + 1): each code's count in the program, then the program's length."""
    out = np.zeros((len(codes), k + 1), dtype=np.float64)
    for i, row in enumerate(codes):
        np.add.at(out[i], np.asarray(row, dtype=np.int64), 1.0)
        out[i, k] = len(row)
    return out


def scene_probes(
    train: ProbeSplit, val: ProbeSplit, k: int, seed: int = 0
) -> tuple[dict[str, Any] | None, str | None]:
    """(the `scene_probes` block, None), or (None, why not) when scenes are missing."""
    tr, va = train.known(), val.known()
    if len(tr) < MIN_TRAIN:
        return None, f"too few train images with a scene ({len(tr)} < {MIN_TRAIN})"
    if not len(va):
        return None, "no val image has a scene"
    counts_tr = np.stack([scene_counts(train.scenes[i]) for i in tr])
    counts_va = np.stack([scene_counts(val.scenes[i]) for i in va])
    features = {
        "codes": (
            code_features([train.codes[i] for i in tr], k),
            code_features([val.codes[i] for i in va], k),
        ),
        "length_only": (train.lengths[tr, None].astype(float), val.lengths[va, None].astype(float)),
    }
    if train.pooled and val.pooled:
        features["teacher_pooled"] = (
            np.concatenate(train.pooled)[tr],
            np.concatenate(val.pooled)[va],
        )
    return probe_features(features, counts_tr, counts_va, seed=seed) | {
        "nearest_neighbour": nearest_neighbour(
            [train.codes[i] for i in tr],
            counts_tr,
            [val.codes[i] for i in va],
            counts_va,
            k,
            seed,
        ),
    }, None


def probe_features(
    features: dict[str, tuple[np.ndarray, np.ndarray]],
    counts_train: np.ndarray,
    counts_val: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """The probe blocks for feature sets {name: (train X, val X)}; `codes` is the headline,
    every other set a baseline record beside it (`teacher_pooled` marked as a ceiling)."""
    n_val = len(counts_val)
    objects_tr, objects_va = counts_train[:, :8].sum(1), counts_val[:, :8].sum(1)
    present_va = counts_val > 0
    preds: dict[str, dict[str, np.ndarray]] = {}
    for name, (x_tr, x_va) in features.items():
        preds[name] = {
            "counts": metrics.fit_ridge_cv(x_tr, counts_train, seed=seed).predict(x_va),
            "objects": metrics.fit_ridge_cv(x_tr, objects_tr, seed=seed).predict(x_va),
        }

    def r2_mean(pred: np.ndarray, target: np.ndarray):
        def stat(idx: np.ndarray) -> float:
            with np.errstate(all="ignore"):
                values = metrics.r2_columns(pred[idx], target[idx])
            return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

        return stat

    def auc_mean(pred: np.ndarray, target: np.ndarray):
        def stat(idx: np.ndarray) -> float:
            values = metrics.auc_columns(pred[idx], target[idx])
            return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

        return stat

    objects_va2 = objects_va[:, None]
    tasks = {
        "attribute_counts": ("r2_mean_15_counts", "counts", counts_val, r2_mean),
        "object_count": ("r2", "objects", objects_va2, r2_mean),
        "presence": ("auc_mean_15_attributes", "counts", present_va, auc_mean),
    }
    out: dict[str, Any] = {
        "method": METHOD,
        "targets": list(TARGETS),
        "n_train": int(len(counts_train)),
        "n_val": int(n_val),
        "features": {
            "codes": "count of each code in the program, and the program's length",
            "length_only": "the program's length",
            "teacher_pooled": "the teacher's patch features mean-pooled (a ceiling)",
        },
    }
    for task, (metric, key, target, stat_of) in tasks.items():
        per = {name: p[key].reshape(n_val, -1) for name, p in preds.items()}
        head = stat_of(per["codes"], target)
        every = np.arange(n_val)
        block: dict[str, Any] = {"metric": metric, "value": _num(head(every))}
        if target.shape[1] > 1:
            columns = (metrics.r2_columns if stat_of is r2_mean else metrics.auc_columns)(
                per["codes"], target
            )
            block["per_target"] = {t: _num(v) for t, v in zip(TARGETS, columns, strict=True)}
        for name in per:
            if name == "codes":
                continue
            rec = compare(n_val, head, stat_of(per[name], target), name=name, metric=metric)
            if name == "teacher_pooled":
                rec["ceiling"] = True
                rec["gap_to_ceiling"] = None if rec["advantage"] is None else -rec["advantage"]
            block[name] = rec
        out[task] = block
    return out


def nearest_neighbour(
    train_codes: Sequence[np.ndarray],
    counts_train: np.ndarray,
    val_codes: Sequence[np.ndarray],
    counts_val: np.ndarray,
    k: int,
    seed: int = 0,
) -> dict[str, Any]:
    """The nearest train program's scene vs a random train scene, per val image: mean
    absolute error over the 15 attribute counts (objects per attribute; lower is better)."""
    from llm_decode.backends.baselines import KnnIndex

    index = KnnIndex([list(c) for c in train_codes], k)
    nearest = np.array([index.nearest(list(c)) for c in val_codes], dtype=np.int64)
    shot = np.random.default_rng(seed).integers(0, len(counts_train), len(counts_val))
    err_nn = np.abs(counts_train[nearest] - counts_val).mean(axis=1)
    err_rand = np.abs(counts_train[shot] - counts_val).mean(axis=1)
    return {
        "metric": "count_error",
        "value": float(err_nn.mean()),
        "unit": "objects per attribute (mean |count error| over the 15 attribute counts)",
        "nearest": "cosine of code-count vectors, ties by edit distance (the knn decoder's)",
        "random_shot": compare_means(
            err_nn,
            err_rand,
            name="random_shot",
            metric="count_error",
            higher_is_better=False,
            seed=seed,
        ),
    }


def probe_run(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    train_split: str = "train",
    val_split: str = "val",
    train_limit: int | None = None,
    val_limit: int | None = None,
    length_mode: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    checkpoint: str = "last",
    progress: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The `scene_probes` block of a run folder, standalone: encodes `train_split` and
    `val_split` of its dataset (the first `*_limit` images) with the run's model; returns
    `{"scene_probes": block or None, "scene_probes_note": why None (absent otherwise),
    "run", "length_mode"}`."""
    from strop.evaluation.run_inputs import dataset_path, load_run_model
    from strop.model.length_modes import check_length_mode, parse_length_mode

    parse_length_mode(length_mode)
    model, info, dev = load_run_model(run_dir, checkpoint, device)
    mode = parse_length_mode(length_mode, info.length_mode)
    check_length_mode(mode, info.model, Path(run_dir).name)
    root = dataset_path(run_dir, info, data)
    splits = [
        collect_split(model, info, dev, root, split, limit, batch_size, mode, progress)
        for split, limit in ((train_split, train_limit), (val_split, val_limit))
    ]
    block, note = scene_probes(splits[0], splits[1], info.model.k, seed)
    out: dict[str, Any] = {"run": Path(run_dir).name, "length_mode": str(mode)}
    out["scene_probes"] = block
    if note:
        out["scene_probes_note"] = note
    return out


def collect_split(
    model: Any,
    info: TokenizerInfo,
    dev: Any,
    root: Path,
    split: str,
    limit: int | None,
    batch_size: int,
    mode: Any,
    progress: bool = False,
    keep_fields: int = 0,
) -> ProbeSplit:
    """Encode the first `limit` images of `split` and gather a `ProbeSplit` (keeping the
    teacher fields of the first `keep_fields`)."""
    from strop.evaluation.batch_encoding import encode_batch
    from strop.evaluation.run_inputs import make_loader, progress_batches

    mc = info.model
    loader = make_loader(root, split, mc.image_size, batch_size, limit)
    out = ProbeSplit(keep_fields=keep_fields)
    batches: Iterable[dict[str, Any]] = progress_batches(loader, f"probe {split}", progress)
    for batch in batches:
        enc = encode_batch(model, batch["image"].to(dev), mode, mc.w_mse, mc.l_min)
        out.update(enc, batch["scene"])
    return out


def _num(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
