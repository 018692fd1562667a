"""Null corpora: each destroys one kind of structure and keeps the rest.

- `shuffle`: codes permuted within each program. Keeps every program's composition (and the
  unigram distribution, lengths, document frequencies); destroys order. Order statistics
  (adjacent pairs, perplexity of n >= 2, code-position information) are compared against it.
- `unigram`: codes drawn i.i.d. from the corpus' unigram distribution at the same program
  lengths. Keeps lengths and code frequencies; destroys order and composition, so it tests
  reuse beyond what frequency alone explains (co-occurrence, compression).
- `markov` (optional): a first-order Markov chain fitted to the corpus' own bigrams (start
  codes from the programs' first codes), sampled at the same lengths. It preserves bigram
  statistics in expectation and tests whether trigrams carry structure beyond bigrams. An exact
  bigram-preserving shuffle (Altschul-Erickson) would keep them exactly; sampling is chosen
  because it vectorises over programs and the difference vanishes at corpus scale.

All are vectorised over the flat corpus and seeded by a `numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np

from grammar.corpus import Corpus
from grammar.ngrams import count_ngrams, unigram_counts

NULL_KINDS = ("shuffle", "unigram", "markov")
#: cached quantities that depend only on each program's multiset of codes
COMPOSITION_ONLY = frozenset({"code_counts", "cooccurrence", "any_pairs", "shuffle_expected"})


def shuffle_within(corpus: Corpus, rng: np.random.Generator) -> Corpus:
    """Each program's codes in a uniformly random order."""
    # one integer sort (program id in the high bits, a random 30-bit key in the low bits) is
    # several times cheaper than a two-key lexsort; two equal random keys in one program
    # (chance ~ L^2 / 2^31) only fix those two codes' relative order: negligible bias
    keys = (corpus.program_ids << 30) | rng.integers(0, 1 << 30, corpus.n_tokens)
    order = np.argsort(keys)
    shuffled = corpus.with_codes(corpus.codes[order], f"{corpus.name}:shuffle")
    # composition-only quantities (per-program code counts, co-occurrence) are unchanged
    for name, value in corpus.cache.items():
        if name.split("@")[0] in COMPOSITION_ONLY:
            shuffled.cache[name] = value
    return shuffled


def unigram_resample(corpus: Corpus, rng: np.random.Generator) -> Corpus:
    """Codes i.i.d. from the unigram distribution, same lengths."""
    counts = unigram_counts(corpus).astype(np.float64)
    codes = rng.choice(corpus.k, size=corpus.n_tokens, p=counts / counts.sum())
    return corpus.with_codes(codes, f"{corpus.name}:unigram")


def markov_resample(corpus: Corpus, rng: np.random.Generator) -> Corpus:
    """First-order Markov chain on the corpus' bigrams, same lengths."""
    bigrams = count_ngrams(corpus, 2)
    prev_code = bigrams.keys // corpus.k
    cum = np.cumsum(bigrams.counts).astype(np.float64)
    row_start = np.searchsorted(prev_code, np.arange(corpus.k))
    row_end = np.searchsorted(prev_code, np.arange(corpus.k), side="right")
    base = np.concatenate([[0.0], cum])  # base[i] = mass before bigram i
    row_mass = base[row_end] - base[row_start]
    uni = unigram_counts(corpus).astype(np.float64)
    lengths = corpus.lengths
    starts = corpus.offsets[:-1]
    firsts = corpus.codes[starts[lengths > 0]]
    first_p = np.bincount(firsts, minlength=corpus.k) / max(firsts.size, 1)
    codes = np.empty(corpus.n_tokens, dtype=np.int64)
    width = int(lengths.max(initial=0))
    alive = np.flatnonzero(lengths > 0)
    codes[starts[alive]] = rng.choice(corpus.k, size=alive.size, p=first_p)
    for t in range(1, width):
        alive = alive[lengths[alive] > t]
        if alive.size == 0:
            break
        prev = codes[starts[alive] + t - 1]
        mass = row_mass[prev]
        u = rng.random(alive.size)
        # codes only ever seen at a program's end have no continuation: fall back to unigrams
        dead = mass <= 0
        target = base[row_start[prev]] + u * mass
        pick = np.searchsorted(cum, target, side="right")
        nxt = bigrams.keys[np.minimum(pick, bigrams.keys.size - 1)] % corpus.k
        if dead.any():
            nxt[dead] = rng.choice(corpus.k, size=int(dead.sum()), p=uni / uni.sum())
        codes[starts[alive] + t] = nxt
    return corpus.with_codes(codes, f"{corpus.name}:markov")


def make_null(kind: str, corpus: Corpus, rng: np.random.Generator) -> Corpus:
    if kind == "shuffle":
        return shuffle_within(corpus, rng)
    if kind == "unigram":
        return unigram_resample(corpus, rng)
    if kind == "markov":
        return markov_resample(corpus, rng)
    raise ValueError(f"unknown null model {kind!r}; expected one of {', '.join(NULL_KINDS)}")
