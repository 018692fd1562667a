"""Export a Re-Pair grammar as an nltk PCFG, and parse programs with it (spot checks).

Design decisions
- Terminals are the codes as strings (`'17'`), rule `i` is the nonterminal `R<i>`, and the
  start symbol `S` generates a program's top-level sequence right-recursively:
  `S -> X S | X` for every symbol X that occurs at the top level.
- Probabilities are nltk's `induce_pcfg` estimate, count(A -> rhs) / count(A -> *), over the
  productions used in the derivation of the whole corpus. Listing every production instance to
  call `induce_pcfg` would create millions of nltk objects for a real run, so the counts come
  from the grammar (rule usage, top-level symbols) and the same division is done once per
  distinct production; a test checks the result equals `induce_pcfg` on the explicit list.
  Every `R` has a single production (probability 1): Re-Pair grammars are straight-line.
- nltk's Viterbi parser tries every production on every span (cubic in the program length
  times the grammar size), so parsing is for spot checks: the grammar is first cut to the
  productions whose expansion occurs inside the program, which cannot change the parse
  (any production used must cover a substring of it).
"""

from __future__ import annotations

from collections import Counter

from nltk.grammar import CFG, PCFG, Nonterminal, ProbabilisticProduction, Production
from nltk.parse import ViterbiParser
from nltk.tree import Tree

from grammar.repair import Grammar

START = Nonterminal("S")


def _symbol(g: Grammar, sym: int) -> str | Nonterminal:
    return str(sym) if sym < g.k else Nonterminal(g.name(sym))


def production_counts(g: Grammar) -> Counter:
    """(lhs, rhs) -> number of uses in the derivation of every program."""
    counts: Counter = Counter()
    for seq in g.sequences:
        for i, sym in enumerate(seq):
            rhs = (sym, "S") if i + 1 < len(seq) else (sym,)
            counts[("S", rhs)] += 1
    for i, (use, (a, b)) in enumerate(zip(g.usage().tolist(), g.rules, strict=True)):
        if use:
            counts[(g.k + i, (a, b))] += use
    return counts


def production_probs(g: Grammar) -> dict[tuple, float]:
    """(lhs, rhs) -> count / count(lhs -> *), the `induce_pcfg` estimate."""
    counts = production_counts(g)
    lhs_total: Counter = Counter()
    for (lhs, _), c in counts.items():
        lhs_total[lhs] += c
    return {key: c / lhs_total[key[0]] for key, c in counts.items()}


def _production(g: Grammar, lhs, rhs, prob: float | None = None) -> Production:
    left = START if lhs == "S" else Nonterminal(g.name(lhs))
    right = tuple(START if s == "S" else _symbol(g, s) for s in rhs)
    if prob is None:
        return Production(left, right)
    return ProbabilisticProduction(left, right, prob=prob)


def to_pcfg(g: Grammar) -> PCFG:
    """The relative-frequency PCFG of the grammar (what `induce_pcfg` gives on its derivations)."""
    prods = [_production(g, lhs, rhs, p) for (lhs, rhs), p in production_probs(g).items()]
    # nltk's left-corner closure is cubic-ish in the grammar size and only serves its chart
    # parsers' filtering; the Viterbi parser never consults it.
    return PCFG(START, prods, calculate_leftcorners=False)


def derivation_productions(g: Grammar) -> list[Production]:
    """Every production instance of the corpus' derivations (small corpora: tests, examples)."""
    return [
        _production(g, lhs, rhs) for (lhs, rhs), c in production_counts(g).items() for _ in range(c)
    ]


def pcfg_text(g: Grammar) -> str:
    """One production a line, `PCFG.fromstring` syntax, written without building nltk objects
    (a real run has 10^5 productions; nltk's constructors would dominate `mine`)."""

    def sym(x) -> str:
        return "S" if x == "S" else (f"'{x}'" if x < g.k else g.name(x))

    lines = [
        f"{sym(lhs)} -> {' '.join(sym(x) for x in rhs)} [{p:.12g}]"
        for (lhs, rhs), p in production_probs(g).items()
    ]
    return "\n".join(lines) + "\n"


def parse_program(
    g: Grammar,
    codes: list[int],
    probs: dict[tuple, float] | None = None,
    expansions: list[str] | None = None,
) -> Tree | None:
    """Most probable parse of one program under the grammar's PCFG (None if not derivable).

    `probs` (`production_probs(g)`) and `expansions` (`g.expansion_texts()`) can be passed
    to parse several programs without recomputing them.
    """
    probs = probs if probs is not None else production_probs(g)
    texts = expansions if expansions is not None else g.expansion_texts()
    text = f" {' '.join(map(str, codes))} "
    wanted = set(codes)

    def fits(x) -> bool:
        if x == "S":
            return True
        return x in wanted if x < g.k else f" {texts[x - g.k]} " in text

    kept = [
        _production(g, lhs, rhs, p)
        for (lhs, rhs), p in probs.items()
        if fits(lhs) and all(fits(x) for x in rhs)
    ]
    if not kept:
        return None
    parser = ViterbiParser(CFG(START, kept))
    try:
        return next(iter(parser.parse([str(c) for c in codes])), None)
    except ValueError:  # a code the grammar never saw
        return None
