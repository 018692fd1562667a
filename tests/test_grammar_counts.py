"""Counting and scoring agree exactly with nltk; the analytic shuffle null matches simulation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from nltk import FreqDist
from nltk.collocations import BigramAssocMeasures, BigramCollocationFinder
from nltk.lm import WittenBellInterpolated
from nltk.lm.preprocessing import padded_everygram_pipeline
from nltk.util import ngrams

from grammar.corpus import Corpus
from grammar.ngrams import count_ngrams, unique_counts
from grammar.nulls import markov_resample, shuffle_within, unigram_resample
from grammar.pairs import (
    adjacent_pairs,
    any_pairs,
    cooccurrence_counts,
    shuffle_expected_adjacent,
    unigram_expected_cooccurrence,
)
from grammar.perplexity import NgramLM


def _random_programs(seed: int, n: int = 150, k: int = 7, max_len: int = 12) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    programs = [rng.integers(0, k, rng.integers(1, max_len)).tolist() for _ in range(n)]
    programs.append([3] * 9)  # a long run: overlapping (3, 3) pairs
    return programs


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_counts_and_doc_freq_match_nltk(n: int) -> None:
    programs = _random_programs(n)
    ours = count_ngrams(Corpus.from_lists(programs, k=7), n)
    counts, docs = FreqDist(), FreqDist()
    for program in programs:
        grams = list(ngrams(program, n))
        counts.update(grams)
        docs.update(set(grams))
    got = {
        tuple(int(c) for c in g): (int(a), int(b))
        for g, a, b in zip(ours.unpack(), ours.counts, ours.doc_freq)
    }
    assert got == {g: (counts[g], docs[g]) for g in counts}


@pytest.mark.parametrize("big_k", [2048, 2**20])
def test_sort_paths_match_the_dense_path(big_k: int) -> None:
    """K^n beyond the dense limit takes the packed (key, program) sort (K = 2048) or, beyond
    int64, the stable argsort (K = 2^20); both must give the dense path's table."""
    programs = _random_programs(5)
    for n in (2, 3, 4) if big_k == 2048 else (2, 3):  # 2^80 would not pack at all
        small = count_ngrams(Corpus.from_lists(programs, k=7), n)
        big = count_ngrams(Corpus.from_lists(programs, k=big_k), n)
        assert np.array_equal(small.unpack(), big.unpack())
        assert np.array_equal(small.counts, big.counts)
        assert np.array_equal(small.doc_freq, big.doc_freq)


def test_adjacent_pair_scores_match_bigram_collocation_finder() -> None:
    programs = _random_programs(11)
    table = adjacent_pairs(Corpus.from_lists(programs, k=7))
    finder = BigramCollocationFinder.from_documents(programs)
    measures = BigramAssocMeasures
    assert len(table) == len(finder.ngram_fd)
    for a, b, count, pmi, llr in zip(table.a, table.b, table.count, table.pmi, table.llr):
        a, b = int(a), int(b)
        assert finder.ngram_fd[(a, b)] == count
        assert pmi == pytest.approx(finder.score_ngram(measures.pmi, a, b), rel=1e-12, abs=1e-12)
        assert llr == pytest.approx(
            finder.score_ngram(measures.likelihood_ratio, a, b), rel=1e-12, abs=1e-9
        )


def test_repeated_code_pair_where_nltk_fails_gets_a_valid_g2() -> None:
    programs = [[5, 5, 5, 5, 5], [5, 1]]  # 2 c(5) - n(5,5) = 8 > N = 7
    finder = BigramCollocationFinder.from_documents(programs)
    with pytest.raises(ValueError, match="math domain error"):
        finder.score_ngram(BigramAssocMeasures.likelihood_ratio, 5, 5)
    table = adjacent_pairs(Corpus.from_lists(programs, k=6))
    row = int(np.flatnonzero((table.a == 5) & (table.b == 5))[0])
    assert np.isfinite(table.llr[row]) and table.llr[row] >= 0
    # the other rows are nltk's numbers
    for i in np.flatnonzero(~((table.a == 5) & (table.b == 5))):
        expected = finder.score_ngram(
            BigramAssocMeasures.likelihood_ratio, int(table.a[i]), int(table.b[i])
        )
        assert table.llr[i] == pytest.approx(expected, rel=1e-12)


def test_cooccurrence_counts_programs_holding_both_codes() -> None:
    programs = _random_programs(3, n=80)
    keys, counts = cooccurrence_counts(Corpus.from_lists(programs, k=7))
    expected: dict[tuple[int, int], int] = {}
    for program in programs:
        codes = sorted(set(program))
        for i, a in enumerate(codes):
            for b in codes[i + 1 :]:
                expected[(a, b)] = expected.get((a, b), 0) + 1
    assert {divmod(int(k), 7): int(c) for k, c in zip(keys, counts)} == expected
    table = any_pairs(Corpus.from_lists(programs, k=7))
    docs = FreqDist(c for p in programs for c in set(p))
    for a, b, n_ab, pmi in zip(table.a, table.b, table.count, table.pmi):
        want = math.log2(n_ab * len(programs)) - math.log2(docs[int(a)] * docs[int(b)])
        assert pmi == pytest.approx(want, rel=1e-12, abs=1e-12)


def _simulated_mean(reps: int, draw: Callable[[], Sequence[float]]) -> np.ndarray:
    """The mean of `reps` draws of a null's counts (a simulation to check its expectation)."""
    return np.mean([np.asarray(draw(), dtype=np.float64) for _ in range(reps)], axis=0)


def test_shuffle_expectation_matches_simulated_shuffles() -> None:
    rng = np.random.default_rng(0)
    corpus = Corpus.from_lists(_random_programs(2, n=120, k=5), k=5)
    table = adjacent_pairs(corpus)
    expected = shuffle_expected_adjacent(corpus, table.a, table.b)
    reps = 1500
    mean = _simulated_mean(
        reps, lambda: count_ngrams(shuffle_within(corpus, rng), 2).lookup(table.keys(5))
    )
    standard_error = np.sqrt(np.maximum(expected, 1e-9) / reps)
    assert np.all(np.abs(mean - expected) < 5 * standard_error)


def test_unigram_cooccurrence_expectation_matches_simulation() -> None:
    rng = np.random.default_rng(1)
    corpus = Corpus.from_lists(_random_programs(4, n=100, k=6), k=6)
    table = any_pairs(corpus)
    expected = unigram_expected_cooccurrence(corpus, table.a, table.b)

    def draw() -> list[int]:
        keys, counts = cooccurrence_counts(unigram_resample(corpus, rng))
        lookup = dict(zip(keys.tolist(), counts.tolist()))
        return [lookup.get(int(k), 0) for k in table.keys(6)]

    assert np.allclose(_simulated_mean(400, draw), expected, rtol=0.05, atol=0.5)


def test_nulls_keep_what_they_promise() -> None:
    rng = np.random.default_rng(2)
    corpus = Corpus.from_lists(_random_programs(6), k=7)
    shuffled = shuffle_within(corpus, rng)
    assert np.array_equal(shuffled.offsets, corpus.offsets)
    for i in range(corpus.n_programs):
        assert sorted(shuffled.program(i)) == sorted(corpus.program(i))
    assert not np.array_equal(shuffled.codes, corpus.codes)
    for null in (unigram_resample(corpus, rng), markov_resample(corpus, rng)):
        assert np.array_equal(null.lengths, corpus.lengths)
        assert null.codes.min() >= 0 and null.codes.max() < 7


def test_markov_null_keeps_bigram_statistics_in_expectation() -> None:
    rng = np.random.default_rng(3)
    base = [[0, 1, 2, 3] * 3, [1, 2, 3, 0] * 2]
    corpus = Corpus.from_lists(base * 50, k=4)
    null = markov_resample(corpus, rng)
    observed = count_ngrams(corpus, 2)
    assert np.array_equal(count_ngrams(null, 2).keys, observed.keys)  # only seen transitions


@pytest.mark.parametrize("order", [1, 2, 3])
def test_witten_bell_scores_match_nltk_lm(order: int) -> None:
    rng = np.random.default_rng(order)
    train = [rng.integers(0, 6, rng.integers(1, 10)).tolist() for _ in range(60)]
    test = [rng.integers(0, 7, rng.integers(1, 10)).tolist() for _ in range(20)]  # 6 unseen
    data, vocab = padded_everygram_pipeline(order, [[str(c) for c in p] for p in train])
    reference = WittenBellInterpolated(order)
    reference.fit(data, vocab)
    model = NgramLM(7, order, base="mle").fit(Corpus.from_lists(train, k=7))
    words, contexts = model.targets(Corpus.from_lists(test, k=7))
    names = {7: "<s>", 8: "</s>"}
    want = [
        reference.score(str(w), [names.get(int(c), str(c)) for c in ctx])
        for w, ctx in zip(words, contexts)
    ]
    assert np.allclose(model.score(words, contexts), want, rtol=1e-12, atol=0)
    with_ngrams = [
        (*[names.get(int(c), str(c)) for c in ctx], str(w)) for w, ctx in zip(words, contexts)
    ]
    seen = [g for g in with_ngrams if g[-1] != "6"]  # nltk: unseen code -> probability 0
    mask = words != 6
    ours = 2.0 ** -np.mean(np.log2(model.score(words[mask], contexts[mask])))
    assert ours == pytest.approx(reference.perplexity(seen), rel=1e-12)


def test_uniform_base_gives_finite_perplexity_on_unseen_codes() -> None:
    train = Corpus.from_lists([[0, 1, 2, 0, 1, 2]] * 10, k=5)
    test = Corpus.from_lists([[0, 1, 4]], k=5)
    assert np.isinf(NgramLM(5, 2, base="mle").fit(train).perplexity(test))
    assert np.isfinite(NgramLM(5, 2).fit(train).perplexity(test))


def test_unique_counts_matches_numpy() -> None:
    keys = np.random.default_rng(0).integers(0, 50, 1000)
    want = np.unique(keys, return_counts=True)
    got = unique_counts(keys)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
