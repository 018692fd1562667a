"""LLM-free baselines computed from the same few-shot pool the LLM sees.

Design decisions
- naive (the paper's "average scene", Appendix G, whose exact definition the paper does not
  give): the pool's mean object count rounded half up; the positions are k-means centroids
  (k = that count, k-means++ init, seeded) of every object position in the pool, sorted by
  (x, y). The attributes follow `NaiveDefinition`:
  - `modal`: every object gets the pool's most frequent value of each attribute (ties go to
    the earlier value in CLEVR's vocabulary order, so the answer never depends on pool order);
  - `proportional` (distribution-shaped): each attribute's values are shared out over the
    objects in proportion to their pool frequencies (largest remainder, ties in vocabulary
    order), most frequent first, so a scene of 7 objects has about 7/8 different colours;
  - `sampled` (distribution-shaped): the attributes of `count` pool objects drawn at random
    (seeded), so their combinations follow the pool's joint distribution.
  It ignores the codes: it is the prior. Which definition reproduces Table 16's naive row is
  measured in docs/TABLE16_CALIBRATION.md; the nearest (by a small margin over `sampled`)
  is the default.
- knn: the scene of the shot whose code-count vector has the highest cosine with the
  query's; exact ties (common for short programs) go to the smaller edit distance between
  the code sequences, then to the earlier shot. It uses code identity only, not order,
  except to break ties.
- Both answer through the same text path as an LLM (JSON that `parse_answer` reads), so the
  runner, results and scoring treat every backend alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from llm_decode.backends.base import Completion, Message
from llm_decode.schema import ABBREVIATIONS, ATTRIBUTES, DecodedObject, DecodedScene

NaiveDefinition = Literal["modal", "proportional", "sampled"]
NAIVE_DEFINITIONS: tuple[str, ...] = ("modal", "proportional", "sampled")
#: Where the naive objects stand: k-means centroids of the pool's positions (the default), or
#: all at the pool's mean position (the most literal "average scene"; calibration only).
NaivePositions = Literal["kmeans", "mean"]
NAIVE_POSITIONS: tuple[str, ...] = ("kmeans", "mean")
#: The definition closest to Table 16's naive row on real CLEVR (docs/TABLE16_CALIBRATION.md).
DEFAULT_NAIVE: NaiveDefinition = "proportional"


def naive_scene(
    pool: Sequence[DecodedScene],
    seed: int = 0,
    definition: NaiveDefinition = DEFAULT_NAIVE,
    positions_at: NaivePositions = "kmeans",
) -> DecodedScene:
    """The pool's average scene under `definition` (see the module docstring)."""
    from scipy.cluster.vq import kmeans2  # lazy: the runner imports this module for its names

    objects = [o for scene in pool for o in scene.objects]
    if not objects:
        raise ValueError("naive baseline: the few-shot pool has no objects")
    count = max(1, math.floor(np.mean([len(s.objects) for s in pool]) + 0.5))
    rng = np.random.default_rng(seed)
    positions = np.array([o.xy for o in objects], dtype=np.float64)
    k = min(count, len(np.unique(positions, axis=0)))
    centroids, _ = kmeans2(positions, k, minit="++", seed=rng)
    centroids = sorted(map(tuple, centroids.tolist()))
    if positions_at == "mean":  # every object at the pool's mean position
        centroids = [tuple(positions.mean(axis=0).tolist())] * k
    if definition == "sampled":
        drawn = [objects[i] for i in rng.choice(len(objects), size=k, replace=len(objects) < k)]
        columns = {attr: [getattr(o, attr) for o in drawn] for attr in ATTRIBUTES}
    elif definition in ("modal", "proportional"):
        columns = {attr: _allocate(objects, attr, k, definition) for attr in ATTRIBUTES}
    else:
        raise ValueError(
            f"naive definition: expected one of {NAIVE_DEFINITIONS}, got {definition!r}"
        )
    return DecodedScene(
        objects=[
            DecodedObject.model_validate(
                {**{a: columns[a][i] for a in ATTRIBUTES}, "x": float(x), "y": float(y)}
            )
            for i, (x, y) in enumerate(centroids)
        ]
    )


def _allocate(objects: Sequence[DecodedObject], attr: str, k: int, definition: str) -> list[str]:
    """`k` values of `attr`: all the modal one, or shared out by pool frequency (largest
    remainder), most frequent first; ties in CLEVR's vocabulary order."""
    vocab = list(ABBREVIATIONS[attr].values())
    counts = np.array([sum(getattr(o, attr) == v for o in objects) for v in vocab], dtype=float)
    order = sorted(range(len(vocab)), key=lambda i: (-counts[i], i))
    if definition == "modal":
        return [vocab[order[0]]] * k
    exact = k * counts / counts.sum()
    share = np.floor(exact).astype(int)
    for i in sorted(range(len(vocab)), key=lambda i: (share[i] - exact[i], order.index(i))):
        if share.sum() >= k:
            break
        share[i] += 1
    return [vocab[i] for i in order for _ in range(share[i])]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two code sequences (unit costs)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


class KnnIndex:
    """Nearest shot by cosine of code-count vectors; ties by edit distance, then shot order."""

    def __init__(self, shot_codes: Sequence[Sequence[int]], codebook_size: int) -> None:
        self.shot_codes = [list(map(int, c)) for c in shot_codes]
        self.codebook_size = codebook_size
        counts = np.stack([self._counts(c) for c in self.shot_codes])
        norms = np.linalg.norm(counts, axis=1, keepdims=True)
        self._unit = counts / np.where(norms == 0, 1.0, norms)

    def _counts(self, codes: Sequence[int]) -> np.ndarray:
        return np.bincount(np.asarray(codes, dtype=np.int64), minlength=self.codebook_size)[
            : self.codebook_size
        ].astype(np.float64)

    def nearest(self, codes: Sequence[int]) -> int:
        query = self._counts(codes)
        norm = np.linalg.norm(query)
        sims = self._unit @ (query / norm if norm else query)
        # Cosines of integer vectors that are equal in exact arithmetic can differ in the last
        # bits; a tolerance keeps such ties ties.
        tied = np.nonzero(sims >= sims.max() - 1e-9)[0]
        if len(tied) == 1:
            return int(tied[0])
        codes = list(map(int, codes))
        return int(min(tied, key=lambda i: (edit_distance(codes, self.shot_codes[i]), i)))


class NaiveBackend:
    """Answers every query with the pool's average scene."""

    endpoint = "naive"

    def __init__(
        self,
        pool: Sequence[DecodedScene],
        seed: int = 0,
        definition: NaiveDefinition = DEFAULT_NAIVE,
    ) -> None:
        self._answer = naive_scene(pool, seed, definition).model_dump_json()

    async def complete(self, messages: list[Message], codes: Sequence[int]) -> Completion:
        return Completion(text=self._answer)

    async def aclose(self) -> None:
        return None


class KnnBackend:
    """Answers with the scene of the nearest shot."""

    endpoint = "knn"

    def __init__(
        self,
        shot_codes: Sequence[Sequence[int]],
        shot_scenes: Sequence[DecodedScene],
        codebook_size: int,
    ) -> None:
        self._index = KnnIndex(shot_codes, codebook_size)
        self._scenes = list(shot_scenes)

    async def complete(self, messages: list[Message], codes: Sequence[int]) -> Completion:
        return Completion(text=self._scenes[self._index.nearest(codes)].model_dump_json())

    async def aclose(self) -> None:
        return None
