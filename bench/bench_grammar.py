"""Benchmark of `grammar`: n-gram counting vs nltk, Re-Pair on 10^6 codes, a whole `mine`.

Rows are `{"name", "value", "unit", "baseline", "ratio"}`; `ratio = baseline / value`, so a
ratio above 1 beats the baseline: for counting the baseline is the nltk path measured in the
same process (target ratio >= 20), for Re-Pair and `mine` it is the time budget of issue 5
(60 s and 30 s).

The corpus is synthetic (nothing is downloaded): programs of 8-32 codes over K = 1024, codes
drawn from a Zipf-like distribution with a few planted bigram "phrases" overwriting part of
each program, so Re-Pair and the pair statistics have something to find, as on real runs.

The nltk path (`nltk.util.ngrams` + `FreqDist` per program, counts and document frequencies
for n = 1..4) is timed on a subsample and scaled linearly to the full corpus; the row name
says so. `python -m bench.bench_grammar [--quick]` prints the table (`--quick` or
`STROP_BENCH_QUICK=1`: 100,000 programs instead of 1,000,000).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from grammar.corpus import Corpus
from grammar.mine import MineConfig, mine_corpus, write_outputs
from grammar.ngrams import count_all
from grammar.repair import repair

K = 1024


def synthetic_corpus(n_programs: int, seed: int = 0, k: int = K) -> Corpus:
    """Zipf-like codes with planted two-code phrases; lengths uniform in [8, 32]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 33, n_programs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    weights = 1.0 / (np.arange(k) + 10.0) ** 1.1
    codes = rng.choice(k, size=int(offsets[-1]), p=weights / weights.sum())
    phrases = rng.integers(0, k, size=(64, 2))
    # every 4th start position (inside a program) begins a planted phrase
    starts = np.flatnonzero(rng.random(codes.size) < 0.25)
    starts = starts[
        np.searchsorted(offsets, starts, side="right")
        == np.searchsorted(offsets, starts + 1, side="right")
    ]
    chosen = phrases[rng.integers(0, len(phrases), starts.size)]
    codes[starts] = chosen[:, 0]
    codes[starts + 1] = chosen[:, 1]
    return Corpus(codes, offsets, k, name="synthetic")


def nltk_ngram_seconds(corpus: Corpus, max_n: int, n_sample: int) -> float:
    """Time of the nltk path on the first `n_sample` programs."""
    from nltk import FreqDist
    from nltk.util import ngrams

    programs = [corpus.program(i).tolist() for i in range(n_sample)]
    start = time.perf_counter()
    for n in range(1, max_n + 1):
        counts, docs = FreqDist(), FreqDist()
        for program in programs:
            grams = list(ngrams(program, n))
            counts.update(grams)
            docs.update(set(grams))
    return time.perf_counter() - start


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _row(name: str, value: float, unit: str, baseline: float) -> dict:
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3),
        "ratio": round(baseline / value, 2),
    }


def run(quick: bool | None = None) -> list[dict]:
    quick = quick if quick is not None else os.environ.get("STROP_BENCH_QUICK", "") not in ("", "0")
    n_programs = 100_000 if quick else 1_000_000
    n_sample = 10_000 if quick else 25_000
    rows = []

    corpus = synthetic_corpus(n_programs)
    corpus.program_ids  # noqa: B018 - built once with the corpus, as in `mine`
    # best of several runs for both sides: the machine is shared and its load drifts
    ours = min(_seconds(lambda: count_all(corpus, 4)) for _ in range(3))
    nltk_scaled = (
        min(nltk_ngram_seconds(corpus, 4, n_sample) for _ in range(2))
        * corpus.n_programs
        / n_sample
    )
    rows.append(
        _row(
            f"n-gram counts+doc freq n=1..4, {corpus.n_programs:,} programs ({corpus.n_tokens:,} codes) "
            f"vs nltk (timed on {n_sample:,} programs, scaled; best of 3 / 2 runs)",
            ours,
            "s",
            nltk_scaled,
        )
    )
    del corpus

    n_codes = 100_000 if quick else 1_000_000
    big = synthetic_corpus(n_codes // 20 + 1, seed=1)
    take = int(np.searchsorted(big.offsets, n_codes, side="right") - 1)
    sub = big.subset(np.arange(take))
    start = time.perf_counter()
    grammar = repair(sub)
    seconds = time.perf_counter() - start
    rows.append(
        _row(
            f"Re-Pair on {sub.n_tokens:,} codes ({grammar.n_rules:,} rules, compression {grammar.compression_ratio:.2f})",
            seconds,
            "s",
            60.0,
        )
    )

    n_mine = 7_000 if quick else 70_000
    corpus = synthetic_corpus(n_mine, seed=2)
    cfg = MineConfig()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = mine_corpus(corpus, cfg)
        write_outputs(result, Path(tmp), cfg)
        seconds = time.perf_counter() - start
    rows.append(
        _row(
            f"whole mine of {n_mine:,} programs ({corpus.n_tokens:,} codes, {cfg.null_replicates} replicates x 2 nulls, files written)",
            seconds,
            "s",
            30.0,
        )
    )
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    rows = run(quick=True if "--quick" in sys.argv[1:] else None)
    table = Table(title="bench_grammar")
    for column in ("name", "value", "unit", "baseline", "ratio"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("name", "value", "unit", "baseline", "ratio")))
    Console().print(table)


if __name__ == "__main__":
    main()
