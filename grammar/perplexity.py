"""Held-out perplexity of smoothed n-gram models (n = 1..3), counted in NumPy.

Design decisions
- The model is interpolated Witten-Bell, written to match `nltk.lm.WittenBellInterpolated`
  term for term (tested): training programs are padded like `padded_everygram_pipeline`
  (n-1 `<s>` before, n-1 `</s>` after) and every k-gram k <= n is counted, so a context's
  counts and distinct continuations are the ones nltk sees. Scores use nltk's recursion:
  `alpha + gamma * lower`, `gamma = N1+(c) / (N1+(c) + N(c))`, an unseen context deferring
  to the lower order.
- nltk bottoms out at the unigram MLE, which gives a code never seen in training probability
  zero and a held-out perplexity of infinity. The default `base="uniform"` interpolates the
  unigram level with the uniform distribution over the closed vocabulary (K codes, `<s>`,
  `</s>`) by the same Witten-Bell rule, the textbook form (Chen & Goodman); `base="mle"`
  reproduces nltk exactly and is what the agreement test uses.
- `nltk.lm` scores one n-gram at a time in Python (and its Kneser-Ney estimator rescans all
  counts per call); here a model is a few sorted key arrays and scoring is `searchsorted`.
- Perplexity is measured on the codes of held-out programs (not on `</s>`), so models of every
  order are scored on the same targets: `2 ** -(mean log2 p(code | up to n-1 previous))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grammar.corpus import Corpus
from grammar.ngrams import pack_ngrams, unique_counts
from grammar.pairs import lookup_counts


@dataclass
class _Level:
    """Counts of one order m: m-gram keys/counts and per-context totals/distinct counts."""

    keys: np.ndarray
    counts: np.ndarray
    ctx_keys: np.ndarray
    ctx_total: np.ndarray
    ctx_types: np.ndarray


class NgramLM:
    """Interpolated Witten-Bell n-gram model over codes `0..K-1` plus `<s>` and `</s>`."""

    def __init__(self, k: int, order: int, base: str = "uniform") -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if base not in ("uniform", "mle"):
            raise ValueError(f"base must be 'uniform' or 'mle', got {base!r}")
        self.k, self.order, self.base = k, order, base
        self.bos, self.eos, self.vocab = k, k + 1, k + 2
        self.levels: dict[int, _Level] = {}

    def pad(self, corpus: Corpus, right: int) -> Corpus:
        """Programs with n-1 `<s>` before and `right` `</s>` after, over the extended vocabulary."""
        left = self.order - 1
        lengths = corpus.lengths + left + right
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        codes = np.full(int(offsets[-1]), self.eos, dtype=np.int64)
        starts = offsets[:-1]
        for j in range(left):
            codes[starts + j] = self.bos
        codes[
            np.arange(corpus.n_tokens)
            + np.repeat(starts + left - corpus.offsets[:-1], corpus.lengths)
        ] = corpus.codes
        return Corpus(codes, offsets, self.vocab, corpus.name)

    def fit(self, corpus: Corpus) -> NgramLM:
        padded = self.pad(corpus, self.order - 1)
        for m in range(1, self.order + 1):
            keys, counts = unique_counts(pack_ngrams(padded, m))
            ctx = keys // self.vocab  # sorted, since keys are
            ctx_keys, ctx_types = unique_counts(ctx, presorted=True)
            first = np.cumsum(ctx_types) - ctx_types
            ctx_total = np.add.reduceat(counts, first) if keys.size else counts
            self.levels[m] = _Level(keys, counts, ctx_keys, ctx_total, ctx_types)
        return self

    def score(self, words: np.ndarray, contexts: np.ndarray) -> np.ndarray:
        """p(word | context) for rows of `contexts` (T, order-1), longest context last used."""
        words = np.asarray(words, dtype=np.int64)
        uni = self.levels[1]
        n1 = float(uni.counts.sum())
        prob = lookup_counts(uni.keys, uni.counts, words) / n1
        if self.base == "uniform":
            gamma0 = uni.keys.size / (uni.keys.size + n1)
            prob = (1.0 - gamma0) * prob + gamma0 / self.vocab
        for length in range(1, self.order):
            level = self.levels[length + 1]
            ctx = np.zeros(words.size, dtype=np.int64)
            for col in range(contexts.shape[1] - length, contexts.shape[1]):
                ctx = ctx * self.vocab + contexts[:, col]
            total = lookup_counts(level.ctx_keys, level.ctx_total, ctx).astype(np.float64)
            types = lookup_counts(level.ctx_keys, level.ctx_types, ctx).astype(np.float64)
            joint = lookup_counts(level.keys, level.counts, ctx * self.vocab + words)
            seen = total > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                gamma = types / (types + total)
                alpha = (1.0 - gamma) * (joint / total)
                prob = np.where(seen, alpha + gamma * prob, prob)
        return prob

    def targets(self, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """(codes, their (order-1)-token contexts with `<s>` padding) for every code."""
        padded = self.pad(corpus, 0)
        left = self.order - 1
        index = np.arange(corpus.n_tokens) + np.repeat(
            padded.offsets[:-1] + left - corpus.offsets[:-1], corpus.lengths
        )
        contexts = (
            np.stack([padded.codes[index - left + j] for j in range(left)], axis=1)
            if left
            else np.zeros((index.size, 0), np.int64)
        )
        return padded.codes[index], contexts

    def perplexity(self, corpus: Corpus) -> float:
        words, contexts = self.targets(corpus)
        if words.size == 0:
            return float("nan")
        with np.errstate(divide="ignore"):
            logp = np.log2(self.score(words, contexts))
        return float(2.0 ** -logp.mean())


def heldout_split(corpus: Corpus, fraction: float, seed: int) -> tuple[Corpus, Corpus]:
    """Random train / held-out split of programs (at least one program each when possible)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(corpus.n_programs)
    n_held = min(max(int(round(fraction * corpus.n_programs)), 1), corpus.n_programs - 1)
    return corpus.subset(np.sort(order[n_held:])), corpus.subset(np.sort(order[:n_held]))


def heldout_perplexity(
    corpus: Corpus, orders: tuple[int, ...] = (1, 2, 3), fraction: float = 0.1, seed: int = 0
) -> dict[int, float]:
    """Perplexity of each order's model, trained on one split and scored on the other."""
    if corpus.n_programs < 2:
        return {n: float("nan") for n in orders}
    train, held = heldout_split(corpus, fraction, seed)
    return {n: NgramLM(corpus.k, n).fit(train).perplexity(held) for n in orders}
