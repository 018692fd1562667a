"""n-gram counting over integer-packed keys, and the statistics built on the counts.

Design decisions
- An n-gram starting at token `i` is packed into one int64 key `sum_j codes[i+j] * K^(n-1-j)`,
  for every start whose n-gram stays inside its program (the flat layout needs no padding
  sentinel: a validity mask on start positions keeps n-grams from spanning two programs).
  `K^n` must fit in int64; beyond that we refuse with a clear message rather than overflow.
- Counts and document frequencies come from one sort. When `K^n * n_programs` fits in int64
  the program index is packed into the low digits of the key (`key * P + program`), so a plain
  `np.sort` (the fastest NumPy sort) groups equal n-grams with their programs in order;
  otherwise a stable argsort of the key (programs are already in order) does the same.
- Results agree exactly with `nltk.util.ngrams` + `FreqDist` per program (tested): n-grams do
  not span program boundaries, as with `BigramCollocationFinder.from_documents`.
- Reuse rate of order n: the share of n-gram occurrences whose n-gram type occurs in at least
  two programs, i.e. how much of the corpus is made of pieces that recur across images.
- Positional usage is summarised by the mutual information between code and position (bits):
  zero when codes are placed without regard to position, the "order" a shuffle destroys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grammar.corpus import Corpus, CorpusError

_INT64_MAX = np.iinfo(np.int64).max


#: rows of an n-gram table handled at a time by `NgramCounts.top` and `reuse_rate`
TOP_CHUNK = 1 << 18


@dataclass
class NgramCounts:
    """Distinct n-grams of one order: sorted packed `keys`, `counts`, `doc_freq`."""

    n: int
    k: int
    keys: np.ndarray
    counts: np.ndarray
    doc_freq: np.ndarray

    @property
    def n_types(self) -> int:
        return int(self.keys.size)

    @property
    def n_occurrences(self) -> int:
        return int(self.counts.sum())

    def unpack(self, keys: np.ndarray | None = None) -> np.ndarray:
        """(m, n) code matrix for `keys` (default: all distinct n-grams)."""
        return unpack_keys(self.keys if keys is None else keys, self.n, self.k)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Counts of arbitrary packed keys (0 where absent)."""
        keys = np.asarray(keys, dtype=np.int64)
        if self.keys.size == 0:
            return np.zeros(keys.shape, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        return np.where(self.keys[pos] == keys, self.counts[pos], 0)

    def reuse_rate(self) -> float:
        """Share of occurrences whose n-gram type appears in two or more programs. Summed
        `TOP_CHUNK` rows at a time: a mask and a selection of the whole table took up to 9/8
        of one of its arrays again, on a dataset's exact counts a peak growing with the corpus."""
        total = self.counts.sum()
        if not total:
            return float("nan")
        reused = 0
        for start in range(0, self.counts.size, TOP_CHUNK):
            part = slice(start, start + TOP_CHUNK)
            reused += int(self.counts[part][self.doc_freq[part] >= 2].sum())
        return float(reused / total)

    def top(self, m: int = 10) -> list[dict]:
        """The `m` most frequent n-grams, ties by key. Found chunk by chunk (`TOP_CHUNK` rows
        and the best `m` so far): one sort of the whole table took about 2/3 of the table's
        size again, which on a 100M-code dataset's exact counts is gigabytes."""
        order = np.zeros(0, dtype=np.int64)
        for start in range(0, self.keys.size, TOP_CHUNK):
            # keys are sorted and distinct, so an index's order is its key's order
            rows = np.concatenate([order, np.arange(start, min(start + TOP_CHUNK, self.keys.size))])
            order = rows[np.lexsort((rows, -self.counts[rows]))[:m]]
        grams = self.unpack(self.keys[order])
        return [
            {"ngram": " ".join(map(str, g)), "count": int(c), "doc_freq": int(d)}
            for g, c, d in zip(grams, self.counts[order], self.doc_freq[order], strict=True)
        ]


def unique_counts(keys: np.ndarray, presorted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts, by one plain sort.

    `np.unique` without `return_counts` takes a hash-based path in NumPy 2.x that is an order
    of magnitude slower on large int64 keys than sorting; this is the fast path, always.
    """
    keys = np.asarray(keys, dtype=np.int64)
    keys = keys if presorted else np.sort(keys)
    if keys.size == 0:
        return keys, np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[first], np.diff(np.append(first, keys.size))


class MaxNError(CorpusError):
    """`--max-n` too large for the corpus' K: a wrong command line, not failed work."""


def check_packable(k: int, n: int) -> None:
    """n-grams over K codes are packed into one int64 key; K^n must fit."""
    if k**n > _INT64_MAX:
        raise MaxNError(
            f"--max-n {n} over K={k}: {n}-grams do not fit an int64 key (K^n > 2^63); lower --max-n"
        )


def _start_mask(corpus: Corpus, n: int) -> np.ndarray:
    """True at tokens that start an n-gram inside their program: all but each program's
    last n-1 tokens (a mask and a small scatter, no per-token index arithmetic)."""
    mask = np.ones(corpus.n_tokens, dtype=bool)
    ends, lengths = corpus.offsets[1:], corpus.lengths
    for j in range(1, n):
        mask[(ends - j)[lengths >= j]] = False
    return mask


def pack_ngrams(corpus: Corpus, n: int, starts: np.ndarray | None = None) -> np.ndarray:
    """Packed keys of every n-gram occurrence, in corpus order.

    Keys are computed on contiguous shifted slices of the code array (no gathers), then the
    starts that stay inside a program are kept.
    """
    check_packable(corpus.k, n)
    size = corpus.n_tokens - n + 1
    if size <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = corpus.codes[:size].copy()
    for j in range(1, n):
        keys *= corpus.k
        keys += corpus.codes[j : j + size]
    if starts is not None:
        return keys[starts]
    return keys[_start_mask(corpus, n)[:size]]


def unpack_keys(keys: np.ndarray, n: int, k: int) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.int64)
    out = np.empty((keys.size, n), dtype=np.int64)
    rest = keys.copy()
    for j in range(n - 1, -1, -1):
        out[:, j] = rest % k
        rest //= k
    return out


#: largest K^n counted with a dense `np.bincount` instead of a sort (4M bins, 32 MB)
DENSE_MAX = 1 << 22


def count_ngrams(corpus: Corpus, n: int) -> NgramCounts:
    """Counts and document frequencies of all n-grams of order `n`.

    Small key spaces (K^n <= DENSE_MAX: unigrams, and bigrams up to K = 2048) are counted
    with `np.bincount`, and programs' repeated n-grams are found by sorting each program's
    keys separately (short rows: far cheaper than one global sort). Larger key spaces take
    one global sort of `key << bits(P) | program`.
    """
    keys = pack_ngrams(corpus, n)
    if keys.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return NgramCounts(n, corpus.k, empty, empty, empty)
    mask = _start_mask(corpus, n)[: corpus.n_tokens - n + 1]
    prog = corpus.program_ids[: mask.size][mask]
    space = corpus.k**n
    if space <= DENSE_MAX:
        counts = np.bincount(keys, minlength=space)
        column = corpus.positions[: mask.size][mask]
        distinct = _distinct_per_program(keys, column, prog, corpus.n_programs, space)
        doc_freq = np.bincount(distinct, minlength=space)
        seen = np.flatnonzero(counts)
        return NgramCounts(n, corpus.k, seen, counts[seen], doc_freq[seen])
    bits = max(int(corpus.n_programs - 1).bit_length(), 1)
    if space <= _INT64_MAX >> bits:
        # program index in the low bits: one plain sort groups equal n-grams by program, and
        # a change of the packed value marks a new (n-gram, program) pair
        combined = (keys << bits) | prog
        combined.sort()
        sorted_keys = combined >> bits
        new_doc = np.empty(combined.size, dtype=bool)
        new_doc[0] = True
        np.not_equal(combined[1:], combined[:-1], out=new_doc[1:])
    else:
        order = np.argsort(keys, kind="stable")
        sorted_keys, sorted_prog = keys[order], prog[order]
        new_doc = np.empty(sorted_keys.size, dtype=bool)
        new_doc[0] = True
        new_doc[1:] = (sorted_keys[1:] != sorted_keys[:-1]) | (sorted_prog[1:] != sorted_prog[:-1])
    # only positions where (n-gram, program) changes can start a new n-gram
    doc_pos = np.flatnonzero(new_doc)
    doc_keys = sorted_keys[doc_pos]
    key_in_doc = np.empty(doc_pos.size, dtype=bool)
    key_in_doc[0] = True
    np.not_equal(doc_keys[1:], doc_keys[:-1], out=key_in_doc[1:])
    first_doc = np.flatnonzero(key_in_doc)
    first = doc_pos[first_doc]
    counts = np.diff(first, append=sorted_keys.size)
    doc_freq = np.diff(first_doc, append=doc_pos.size)
    return NgramCounts(n, corpus.k, doc_keys[first_doc], counts, doc_freq)


def _distinct_per_program(
    keys: np.ndarray, column: np.ndarray, prog: np.ndarray, n_programs: int, sentinel: int
) -> np.ndarray:
    """Each program's distinct keys, concatenated (a program x position grid sorted by row)."""
    width = int(column.max()) + 1
    # keys < DENSE_MAX fit int32, whose row sorts are about twice as fast as int64's
    grid = np.full((n_programs, width), sentinel, dtype=np.int32 if sentinel < 2**31 else np.int64)
    grid[prog, column] = keys
    grid.sort(axis=1)
    keep = grid != sentinel
    keep[:, 1:] &= grid[:, 1:] != grid[:, :-1]
    return grid[keep]


def count_all(corpus: Corpus, max_n: int) -> dict[int, NgramCounts]:
    return {n: count_ngrams(corpus, n) for n in range(1, max_n + 1)}


def unigram_counts(corpus: Corpus) -> np.ndarray:
    """Dense (K,) count vector."""
    return np.bincount(corpus.codes, minlength=corpus.k)


def positional_usage(corpus: Corpus) -> np.ndarray:
    """(K, max_len) counts of each code at each program position."""
    width = int(corpus.lengths.max(initial=0))
    flat = corpus.codes * width + corpus.positions
    return np.bincount(flat, minlength=corpus.k * width).reshape(corpus.k, width)


def code_position_mi(corpus: Corpus) -> float:
    """Mutual information (bits) between a token's code and its position in the program."""
    table = positional_usage(corpus).astype(np.float64)
    total = table.sum()
    if total == 0:
        return float("nan")
    joint = table / total
    pc = joint.sum(axis=1, keepdims=True)
    pp = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log2(joint[nz] / (pc @ pp)[nz])))


def codebook_stats(corpus: Corpus) -> dict[str, float]:
    """Standard codebook statistics: utilisation, effective vocabulary, entropy (bits)."""
    return codebook_stats_of_counts(unigram_counts(corpus))


def codebook_stats_of_counts(counts: np.ndarray) -> dict[str, float]:
    """`codebook_stats` from the usage count of each of the K codes (in memory or merged
    over a dataset's shards)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    return {
        "vocab_used": int((counts > 0).sum()),
        "utilisation": float((counts > 0).mean()),
        "entropy_bits": entropy,
        "effective_vocab": float(2.0**entropy),
    }
