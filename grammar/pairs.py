"""Pair reuse: adjacent pairs and pairs anywhere in a program, scored by PMI, NPMI and G^2.

Design decisions
- Adjacent pairs follow nltk's `BigramCollocationFinder.from_documents` exactly: the pair count
  is the number of adjacent occurrences inside programs (runs `a a a` count twice), the
  marginals are the codes' unigram counts and the total is the number of tokens. PMI and the
  log-likelihood ratio (Dunning's G^2) use `BigramAssocMeasures`' formulas term for term, so
  scores agree with nltk to the last few ulps (tested).
- nltk fails with a math domain error on a repeated-code pair (X, X) when X is so frequent
  that `2 c(X) - n_XX > N`: its contingency table, built from unigram marginals, then has a
  negative cell. For those rows only, G^2 is computed on the table of adjacent slots instead
  (first element X or not, second element X or not, over all adjacent slots), which is always
  a valid table. PMI needs no such fix.
- "Any" pairs are unordered pairs of distinct codes that occur in the same program. They are
  counted once per program (document co-occurrence): the 2x2 table is then over programs
  (contains a / contains b), which is valid and answers "do these codes get reused together".
- A frequency floor (`min_count`) keeps rare pairs out, so PMI does not crown pairs seen once
  and the number of tests stays honest.
- Significance is analytic, because Monte-Carlo p-values cannot go below 1/(m+1) and never
  survive correction over ~10^5 pairs. Two questions, two tests, both Benjamini-Hochberg
  corrected (`scipy.stats.false_discovery_control`):
  * `q_value`: one-sided G^2 test of attraction (chi-square, 1 dof) against independence of
    the two codes, nltk's table. Codes that merely share programs also look "attracted" here.
  * `q_null`: the count against its exact expectation under the null that matters for the
    kind, with a Poisson upper tail. Adjacent pairs: the within-program shuffle, under which
    a program of length L holding c_a and c_b copies has c_a c_b / L adjacent (a, b) pairs
    expected (c_a (c_a - 1) / L for a == b): order beyond composition. Any pairs: unigram
    resampling at the same lengths, under which a program of length L holds both codes with
    probability 1 - (1-p_a)^L - (1-p_b)^L + (1-p_a-p_b)^L. The Poisson tail is conservative
    where the count is a sum of independent indicators (its variance is below its mean) and
    needs no replicates, so it is computed identically on the null corpora themselves.
    (Replicate z-scores were the alternative; with a handful of replicates their spread is
    too noisy for p-values of 1e-6 and beyond.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse, special, stats

from grammar.corpus import Corpus
from grammar.ngrams import NgramCounts, count_ngrams, unigram_counts, unique_counts

_SMALL = 1e-20  # nltk.metrics.association._SMALL


def nltk_pmi(n_ii: np.ndarray, n_ix: np.ndarray, n_xi: np.ndarray, n_xx: float) -> np.ndarray:
    """`BigramAssocMeasures.pmi`: log2(n_ii * N) - log2(n_ix * n_xi)."""
    n_ii = np.asarray(n_ii, dtype=np.float64)
    return np.log2(n_ii * n_xx) - np.log2(
        np.asarray(n_ix, np.float64) * np.asarray(n_xi, np.float64)
    )


def contingency(n_ii, n_ix, n_xi, n_xx) -> tuple[np.ndarray, ...]:
    """`BigramAssocMeasures._contingency`: cells (ii, oi, io, oo) as float64."""
    n_ii = np.asarray(n_ii, dtype=np.float64)
    n_oi = np.asarray(n_xi, dtype=np.float64) - n_ii
    n_io = np.asarray(n_ix, dtype=np.float64) - n_ii
    return n_ii, n_oi, n_io, n_xx - n_ii - n_oi - n_io


def g2(cells: tuple[np.ndarray, ...]) -> np.ndarray:
    """`NgramAssocMeasures.likelihood_ratio` on contingency cells, same operation order."""
    c = cells
    n_xx = ((c[0] + c[1]) + c[2]) + c[3]
    total = np.zeros_like(c[0])
    for i in range(4):
        expected = (c[i] + c[i ^ 1]) * (c[i] + c[i ^ 2]) / n_xx
        with np.errstate(divide="ignore", invalid="ignore"):
            total = total + c[i] * np.log(c[i] / (expected + _SMALL) + _SMALL)
    return 2 * total


def expected_ii(cells: tuple[np.ndarray, ...]) -> np.ndarray:
    n_xx = cells[0] + cells[1] + cells[2] + cells[3]
    return (cells[0] + cells[1]) * (cells[0] + cells[2]) / n_xx


@dataclass
class PairTable:
    """Scored pairs of one kind (`adjacent` or `any`); arrays aligned row by row."""

    kind: str
    a: np.ndarray
    b: np.ndarray
    count: np.ndarray
    marg_a: np.ndarray
    marg_b: np.ndarray
    total: float
    pmi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    npmi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    llr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    attract: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    p_value: np.ndarray | None = None
    q_value: np.ndarray | None = None
    expected_null: np.ndarray | None = None
    q_null: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.a.size)

    def keys(self, k: int) -> np.ndarray:
        return self.a * k + self.b

    def n_significant(self, alpha: float = 0.05, against_null: bool = False) -> int | None:
        q = self.q_null if against_null else self.q_value
        return None if q is None else int(np.sum(q < alpha))


def _score(
    table: PairTable, slots: tuple[np.ndarray, np.ndarray, float] | None = None
) -> PairTable:
    """Fill PMI, NPMI, G^2 and the direction of association."""
    cells = contingency(table.count, table.marg_a, table.marg_b, table.total)
    table.pmi = nltk_pmi(table.count, table.marg_a, table.marg_b, table.total)
    with np.errstate(divide="ignore", invalid="ignore"):
        # NPMI is 1 for a pair that fills every slot (p(a, b) = 1, where -log p is 0)
        table.npmi = np.where(
            table.count < table.total, table.pmi / -np.log2(table.count / table.total), 1.0
        )
    invalid = np.zeros(len(table), dtype=bool)
    for cell in cells:
        invalid |= cell < 0
    llr = g2(cells)
    attract = cells[0] > expected_ii(cells)
    if invalid.any():
        if slots is None:
            raise ValueError(f"{table.kind} pairs: invalid contingency table and no fallback")
        first, second, n_slots = slots
        fixed = contingency(table.count[invalid], first[invalid], second[invalid], n_slots)
        llr[invalid] = g2(fixed)
        attract[invalid] = fixed[0] > expected_ii(fixed)
    table.llr = llr
    table.attract = attract
    return table


def adjacent_pairs(
    corpus: Corpus, bigrams: NgramCounts | None = None, min_count: int = 1
) -> PairTable:
    """Adjacent pairs inside programs with nltk's marginals (unigram counts, N tokens)."""
    bigrams = bigrams if bigrams is not None else count_ngrams(corpus, 2)
    keep = bigrams.counts >= min_count
    ab = bigrams.unpack(bigrams.keys[keep])
    uni = unigram_counts(corpus)
    table = PairTable(
        kind="adjacent",
        a=ab[:, 0],
        b=ab[:, 1],
        count=bigrams.counts[keep],
        marg_a=uni[ab[:, 0]],
        marg_b=uni[ab[:, 1]],
        total=float(corpus.n_tokens),
    )
    # slot marginals for the (X, X) fallback: X as first / as second element of an adjacent slot
    all_ab = bigrams.unpack()
    first_all = np.bincount(all_ab[:, 0], weights=bigrams.counts, minlength=corpus.k)
    second_all = np.bincount(all_ab[:, 1], weights=bigrams.counts, minlength=corpus.k)
    slots = (first_all[table.a], second_all[table.b], float(bigrams.counts.sum()))
    return _score(table, slots)


def code_counts_per_program(corpus: Corpus) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(program, code, copies) for every distinct code of every program, program-major."""
    if "code_counts" not in corpus.cache:
        combined, copies = unique_counts(corpus.program_ids * corpus.k + corpus.codes)
        prog, codes = np.divmod(combined, corpus.k)
        corpus.cache["code_counts"] = (prog, codes, copies)
    return corpus.cache["code_counts"]


def _program_by_code(corpus: Corpus, values: np.ndarray | None = None) -> sparse.csr_matrix:
    """Sparse (programs x K) matrix of per-program code copies (or `values` in their place)."""
    prog, codes, copies = code_counts_per_program(corpus)
    data = copies.astype(np.float64) if values is None else values
    return sparse.csr_matrix((data, (prog, codes)), shape=(corpus.n_programs, corpus.k))


def cooccurrence_counts(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """Unordered distinct-code pairs (packed a*K+b, a<b) and the number of programs with both.

    The program x code presence matrix B gives every count at once as B^T B (sparse product,
    work proportional to the sum over programs of distinct codes squared). Cached on the
    corpus: it depends on program composition only, which a within-program shuffle keeps.
    """
    if "cooccurrence" not in corpus.cache:
        presence = _program_by_code(corpus)
        presence.data[:] = 1.0
        both = sparse.triu(presence.T @ presence, k=1).tocoo()
        keys = both.row.astype(np.int64) * corpus.k + both.col
        order = np.argsort(keys)
        corpus.cache["cooccurrence"] = (keys[order], np.rint(both.data[order]).astype(np.int64))
    return corpus.cache["cooccurrence"]


def any_pairs(
    corpus: Corpus, min_count: int = 1, cooccurrence: tuple[np.ndarray, np.ndarray] | None = None
) -> PairTable:
    """Distinct codes co-occurring in a program; table over programs (document frequency)."""
    keys, counts = cooccurrence if cooccurrence is not None else cooccurrence_counts(corpus)
    keep = counts >= min_count
    a, b = np.divmod(keys[keep], corpus.k)
    _, codes, _ = code_counts_per_program(corpus)
    df = np.bincount(codes, minlength=corpus.k)
    table = PairTable(
        kind="any",
        a=a,
        b=b,
        count=counts[keep],
        marg_a=df[a],
        marg_b=df[b],
        total=float(corpus.n_programs),
    )
    return _score(table)


def add_significance(table: PairTable) -> PairTable:
    """One-sided G^2 test of attraction, Benjamini-Hochberg corrected."""
    if len(table) == 0:
        table.p_value = table.q_value = np.zeros(0)
        return table
    # chi-square(1) survival function, erfc(sqrt(x/2)): the same value as scipy.stats.chi2.sf
    # without the distribution machinery's overhead on 10^5-10^6 values
    two_sided = special.erfc(np.sqrt(np.maximum(table.llr, 0.0) / 2.0))
    table.p_value = np.where(table.attract, two_sided / 2, 1 - two_sided / 2)
    table.q_value = stats.false_discovery_control(table.p_value, method="bh")
    return table


def add_null_test(table: PairTable, expected: np.ndarray) -> PairTable:
    """Poisson upper-tail p of each count given its null expectation; BH q-values."""
    table.expected_null = np.asarray(expected, dtype=np.float64)
    if len(table) == 0:
        table.q_null = np.zeros(0)
        return table
    # P(X >= count) for X ~ Poisson(expected): the regularised lower incomplete gamma
    count = table.count.astype(np.float64)
    p = np.where(
        count > 0,
        special.gammainc(np.maximum(count, 1.0), np.maximum(table.expected_null, 1e-300)),
        1.0,
    )
    table.q_null = stats.false_discovery_control(np.clip(p, 0.0, 1.0), method="bh")
    return table


def shuffle_expected_adjacent(corpus: Corpus, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Expected adjacent (a, b) counts when codes are shuffled within programs (exact).

    With C the program x code copy matrix and W = diag(1 / length), the expectations of all
    ordered pairs are C^T W C, except on the diagonal, where c (c - 1) replaces c^2.
    """
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if a.size == 0:
        return np.zeros(0)
    counts = _program_by_code(corpus)
    weighted = sparse.diags(1.0 / np.maximum(corpus.lengths, 1)) @ counts
    own = np.asarray(weighted.sum(axis=0)).ravel()  # sum_p c_ap / L_p
    prog, _, _ = code_counts_per_program(corpus)
    product_work = float(np.sum(np.bincount(prog).astype(np.float64) ** 2))
    column_work = 2.0 * a.size * prog.size / corpus.k
    if 10 * column_work < product_work:  # fancy column indexing costs ~10x a product's step
        # few candidate pairs: one weighted dot product of code columns per pair
        cols, wcols = counts.tocsc(), weighted.tocsc()
        values = np.asarray(wcols[:, a].multiply(cols[:, b]).sum(axis=0)).ravel()
    else:
        # all ordered pairs at once; cached, since it depends on composition only
        if "shuffle_expected" not in corpus.cache:
            expected = (counts.T @ weighted).tocsr()
            # dense lookup is cheaper than sparse fancy indexing where it fits
            corpus.cache["shuffle_expected"] = expected.toarray() if corpus.k <= 2048 else expected
        expected = corpus.cache["shuffle_expected"]
        if isinstance(expected, np.ndarray):
            values = expected[a, b]
        else:
            values = np.asarray(expected[a, b]).ravel()
    return np.where(a == b, values - own[a], values)


def unigram_expected_cooccurrence(corpus: Corpus, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Expected number of programs holding both a and b under i.i.d. unigram resampling."""
    p = np.bincount(corpus.codes, minlength=corpus.k) / corpus.n_tokens
    lengths, n_with = unique_counts(corpus.lengths)
    qa, qb = 1.0 - p[a], 1.0 - p[b]
    qab = np.clip(1.0 - p[a] - p[b], 0.0, 1.0)
    expected = np.zeros(a.size)
    for length, n in zip(lengths.tolist(), n_with.tolist(), strict=True):
        expected += n * (1.0 - qa**length - qb**length + qab**length)
    return expected


def lookup_counts(keys: np.ndarray, counts: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Counts of `wanted` keys in a sorted (keys, counts) table, 0 where absent."""
    if keys.size == 0:
        return np.zeros(wanted.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    return np.where(keys[pos] == wanted, counts[pos], 0)


def distance_mi(corpus: Corpus, max_distance: int = 8) -> list[float]:
    """Mutual information (bits) between the codes at positions i and i+d, d = 1..D.

    Reuse as a function of distance: in a sequence with grammar-like structure it decays with
    distance; after a within-program shuffle it is flat.
    """
    k = corpus.k
    prog = corpus.program_ids
    out = []
    for d in range(1, max_distance + 1):
        ok = np.flatnonzero(prog[d:] == prog[:-d])
        if ok.size == 0:
            out.append(float("nan"))
            continue
        keys = corpus.codes[ok] * k + corpus.codes[ok + d]
        if k * k <= 1 << 26:
            joint = np.bincount(keys, minlength=k * k).astype(np.float64)
            nz = np.flatnonzero(joint)
            cnt = joint[nz]
        else:
            nz, cnt = unique_counts(keys)
            cnt = cnt.astype(np.float64)
        total = cnt.sum()
        pa = np.bincount(corpus.codes[ok], minlength=k) / total
        pb = np.bincount(corpus.codes[ok + d], minlength=k) / total
        p = cnt / total
        out.append(float(np.sum(p * np.log2(p / (pa[nz // k] * pb[nz % k])))))
    return out
