"""Re-Pair: hand-made cases, a naive reference on random corpora, exact expansion, PCFG export."""

from __future__ import annotations

import numpy as np
import pytest
from nltk.grammar import PCFG, induce_pcfg

from grammar.corpus import Corpus
from grammar.pcfg import START, derivation_productions, parse_program, pcfg_text, to_pcfg
from grammar.repair import repair


def _repair(programs: list[list[int]], k: int):
    return repair(Corpus.from_lists(programs, k=k))


def naive_repair(programs: list[list[int]], k: int):
    """Quadratic Re-Pair by the book: recount every round, greedy left-to-right counting."""
    seqs = [list(p) for p in programs]
    rules, counts = [], []
    while True:
        count: dict[tuple[int, int], int] = {}
        for s in seqs:
            last_end: dict[tuple[int, int], int] = {}
            for i in range(len(s) - 1):
                pair = (s[i], s[i + 1])
                if pair[0] == pair[1] and last_end.get(pair) == i:
                    continue  # overlaps the previous (x, x) counted
                count[pair] = count.get(pair, 0) + 1
                if pair[0] == pair[1]:
                    last_end[pair] = i + 1
        best = max(count.values(), default=0)
        if best < 2:
            return rules, counts, seqs
        pair = min(p for p, c in count.items() if c == best)
        symbol = k + len(rules)
        rules.append(pair)
        counts.append(best)
        new = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == pair:
                    out.append(symbol)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new.append(out)
        seqs = new


def test_run_of_four_is_two_non_overlapping_pairs() -> None:
    g = _repair([[0, 0, 0, 0]], k=1)
    assert g.rules == [(0, 0)] and g.rule_counts == [2]
    assert g.sequences == [[1, 1]]  # R0 R0: (R0, R0) occurs once, no second rule
    assert g.expand_sequence(g.sequences[0]) == [0, 0, 0, 0]


def test_run_of_three_is_one_pair() -> None:
    g = _repair([[0, 0, 0], [0, 0, 0]], k=1)
    assert g.rules == [(0, 0), (1, 0)]  # (a a) twice, then (R0 a) twice
    assert g.rule_counts == [2, 2]
    assert g.sequences == [[2], [2]]


def test_alternating_sequence_nests_rules() -> None:
    g = _repair([[0, 1, 0, 1, 0, 1, 0, 1]], k=2)
    assert g.rules == [(0, 1), (2, 2)] and g.rule_counts == [4, 2]
    assert g.sequences == [[3, 3]]
    assert g.rule_lines()[1].startswith("R1 -> R0 R0\t")


def test_pairs_never_span_program_boundaries() -> None:
    # concatenated, "2 3" and "1 2" would each occur twice
    g = _repair([[1, 2], [3, 1], [2, 3]], k=4)
    assert g.rules == [] and g.sequences == [[1, 2], [3, 1], [2, 3]]


def test_ties_go_to_the_smallest_pair() -> None:
    g = _repair([[3, 4, 1, 2], [1, 2, 3, 4]], k=5)
    assert g.rules[0] == (1, 2)


def test_agrees_with_naive_reference_and_expands_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        k = int(rng.integers(1, 5))
        programs = [
            rng.integers(0, k, rng.integers(0, 30)).tolist() for _ in range(rng.integers(1, 9))
        ]
        if not sum(map(len, programs)):
            continue
        g = _repair(programs, k)
        rules, counts, seqs = naive_repair(programs, k)
        assert (g.rules, g.rule_counts, g.sequences) == (rules, counts, seqs), programs
        assert [g.expand_sequence(s) for s in g.sequences] == programs
        assert g.size == sum(map(len, seqs)) + 2 * len(rules)


def test_usage_counts_every_use_in_the_derivation() -> None:
    g = _repair([[1, 2, 3, 1, 2, 3, 4], [1, 2, 3, 4]], k=5)
    usage = g.usage()
    for i in range(g.n_rules):
        # a rule's uses = occurrences of its expansion in the fully expanded derivation
        uses = sum(1 for s in g.sequences for sym in s if sym == g.k + i)
        uses += sum(usage[j] for j, rule in enumerate(g.rules) for sym in rule if sym == g.k + i)
        assert usage[i] == uses


def test_pcfg_equals_induce_pcfg_and_parses_programs_back() -> None:
    programs = [[1, 2, 3, 1, 2, 3, 4], [1, 2, 3, 4, 4, 4, 4], [5, 1, 2], [1, 2, 3, 4]]
    g = _repair(programs, k=6)
    ours = to_pcfg(g)
    reference = induce_pcfg(START, derivation_productions(g))
    reread = PCFG.fromstring(pcfg_text(g))

    def as_set(grammar: PCFG) -> set:
        return {(str(p.lhs()), p.rhs(), round(p.prob(), 9)) for p in grammar.productions()}

    assert as_set(ours) == as_set(reference)
    assert {(str(p.lhs()), tuple(map(str, p.rhs()))) for p in reread.productions()} == {
        (str(p.lhs()), tuple(map(str, p.rhs()))) for p in ours.productions()
    }
    for program in programs:
        tree = parse_program(g, program)
        assert tree is not None and tree.leaves() == [str(c) for c in program]
    assert parse_program(g, [0, 0]) is None  # code 0 never occurs


@pytest.mark.slow
def test_repair_on_a_million_codes_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 33, 50_000)
    corpus = Corpus(
        rng.integers(0, 1024, lengths.sum()), np.concatenate([[0], np.cumsum(lengths)]), 1024
    )
    start = time.perf_counter()
    g = repair(corpus)
    assert time.perf_counter() - start < 60
    assert g.expand_sequence(g.sequences[0]) == corpus.program(0).tolist()
