"""The `random_shot` control of the knn baselines: the same queries answered from a random
shot's scene instead of the nearest program's, set beside knn as a paired comparison record
(`strop.baselines`) in the decode and QA summaries.

knn reads the codes only through "which shot is nearest"; if a random shot does as well, the
nearest program's scene is no closer to the query's than any other: the codes carry nothing
of the scene that knn can use. The record's `interval` is on the difference (knn minus the
control, oriented so positive means knn is better), and its verdict is "beyond baseline" only
where that interval excludes 0.

Design decisions
- One random shot per test image, drawn from the protocol seed (`random_shots`), so a rerun
  or a resume draws the same control and every question about an image uses the same scene
  (as knn uses one nearest shot per image).
- Decode: per-image count error (lower is better) and attribute accuracy (higher is
  better; attribute error is its complement) of knn's answers against the control's, over
  the images where both are defined.
- QA: accuracy resampled by image (the questions about one image share its scene, so they
  are not independent items); `n` is the number of test images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_decode.schema import DecodedScene
from llm_decode.scoring import ScoringOptions, score_scene
from strop.baselines import compare, compare_means

NAME = "random_shot"


def random_shots(n_images: int, n_shots: int, seed: int) -> list[int]:
    """The random shot each of `n_images` test images is answered from (seeded)."""
    rng = np.random.default_rng([seed, 0x5EED])
    return [int(i) for i in rng.integers(0, n_shots, n_images)] if n_shots else []


def decode_control(
    knn: Sequence[DecodedScene | None],
    control: Sequence[DecodedScene],
    truths: Sequence[DecodedScene],
    options: ScoringOptions | None,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """`{metric: {"random_shot": record}}` for count error and attribute accuracy."""
    pairs = [
        (score_scene(k, t, options), score_scene(c, t, options))
        for k, c, t in zip(knn, control, truths, strict=True)
        if k is not None
    ]
    out: dict[str, dict[str, Any]] = {}
    for metric, higher in (("count_err", False), ("attr_acc", True)):
        both = [
            (getattr(a, metric), getattr(b, metric))
            for a, b in pairs
            if getattr(a, metric) is not None and getattr(b, metric) is not None
        ]
        out[metric] = {
            NAME: compare_means(
                [a for a, _ in both],
                [b for _, b in both],
                name=NAME,
                metric=metric,
                higher_is_better=higher,
                seed=seed,
            )
        }
    return out


def qa_control(
    groups: Sequence[tuple[Sequence[bool], Sequence[bool]]], seed: int
) -> dict[str, dict[str, Any]]:
    """`{"accuracy": {"random_shot": record}}` from, per test image, the correctness of
    knn's answers and of the control's to the same questions (resampled by image)."""
    knn = [np.asarray(k, dtype=np.float64) for k, _ in groups]
    ctl = [np.asarray(c, dtype=np.float64) for _, c in groups]

    def accuracy(per_image: list[np.ndarray]):
        def stat(idx: np.ndarray) -> float:
            picked = [per_image[i] for i in idx]
            total = sum(len(x) for x in picked)
            return sum(float(x.sum()) for x in picked) / total if total else float("nan")

        return stat

    record = compare(
        len(groups), accuracy(knn), accuracy(ctl), name=NAME, metric="accuracy", seed=seed
    )
    record["unit"] = "test images (questions about one image resampled together)"
    return {"accuracy": {NAME: record}}
