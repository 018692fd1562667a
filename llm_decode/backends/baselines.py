"""LLM-free baselines computed from the same few-shot pool the LLM sees.

Design decisions
- naive (the paper's "average scene", Appendix G): the pool's mean object count rounded half
  up; every object gets the pool's most frequent value of each attribute (ties go to the
  earlier value in CLEVR's vocabulary order, so the answer never depends on pool order); the
  positions are k-means centroids (k = that count, k-means++ init, seeded) of every object
  position in the pool, sorted by (x, y). It ignores the codes: it is the prior.
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

import numpy as np
from scipy.cluster.vq import kmeans2

from llm_decode.backends.base import Completion, Message
from llm_decode.schema import ABBREVIATIONS, ATTRIBUTES, DecodedObject, DecodedScene


def naive_scene(pool: Sequence[DecodedScene], seed: int = 0) -> DecodedScene:
    """The pool's average scene (see the module docstring)."""
    objects = [o for scene in pool for o in scene.objects]
    if not objects:
        raise ValueError("naive baseline: the few-shot pool has no objects")
    count = max(1, math.floor(np.mean([len(s.objects) for s in pool]) + 0.5))
    values = {}
    for attr in ATTRIBUTES:
        vocab = list(ABBREVIATIONS[attr].values())
        counts = [sum(getattr(o, attr) == v for o in objects) for v in vocab]
        values[attr] = vocab[int(np.argmax(counts))]  # argmax keeps the first of equal counts
    positions = np.array([o.xy for o in objects], dtype=np.float64)
    k = min(count, len(np.unique(positions, axis=0)))
    centroids, _ = kmeans2(positions, k, minit="++", seed=np.random.default_rng(seed))
    centroids = sorted(map(tuple, centroids.tolist()))
    return DecodedScene(
        objects=[DecodedObject(**values, x=float(x), y=float(y)) for x, y in centroids]
    )


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

    def __init__(self, pool: Sequence[DecodedScene], seed: int = 0) -> None:
        self._answer = naive_scene(pool, seed).model_dump_json()

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
