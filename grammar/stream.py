"""Mining a programs dataset (`strop.evaluation.programs_dataset`) shard by shard, in bounded memory.

Design decisions
- Exact counts stream: n-gram counts and document frequencies (orders 1..max_n; the bigrams
  are the adjacent-pair counts) and the "any" co-occurrence counts of each shard are
  computed by the in-memory counters (`count_ngrams`, `cooccurrence_counts`) on that shard
  alone, then merged by summing per packed key. Programs never span shards, so a document
  frequency is the sum of the shards' document frequencies and the merge equals the counts
  of the whole corpus in memory (tested). Memory holds one shard plus the merged tables,
  which grow with the number of distinct n-grams, not with the corpus. The merge adds a
  shard's sorted table into the running sorted table in place where keys exist and inserts
  the new keys (`_merge_into`), growing each array in place (`_insert_in_place`): its
  transient is the size of a shard's table, not a copy of the running table, which
  a concatenate-and-sort (several copies) and then `np.insert` (one array) took (measured by
  `python -m bench --only mine`).
- Shards may be counted in worker processes (`workers`): each returns its tables, merged in
  manifest order, so the result does not depend on how many workers ran. At most
  `2 * workers` shards are in flight: a pool that counts faster than the merge would
  otherwise pile up every shard's tables in memory.
- What cannot stream (the null corpora, held-out perplexity, pair significance, distance MI,
  Re-Pair) runs on a seeded uniform sample of at most `sample_programs` programs, drawn by
  row index from the manifest's row count before any shard is read, and copied out of
  each shard as it passes (a program read from parquet is a view of its whole shard's
  codes: kept as a view, the sample would hold every shard); `summary.json` says so
  under `sample`, and its headline statistics (observed beside null) are the sample's, so
  observed and null stay one computation on one corpus. `ngrams.tsv` and the `ngrams` block
  of the summary are the exact counts of the whole dataset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from grammar.corpus import Corpus, CorpusError, from_programs
from grammar.ngrams import (
    NgramCounts,
    check_packable,
    codebook_stats_of_counts,
    count_ngrams,
)
from grammar.pairs import cooccurrence_counts
from strop.runs import Programs, RunFolderError

#: programs the non-streaming statistics (nulls, Re-Pair, perplexity, significance) see
SAMPLE_PROGRAMS = 200_000


class ShardCounts:
    """Exact counts of some shards: n-grams per order and distinct-code co-occurrences."""

    def __init__(self, k: int, max_n: int) -> None:
        empty = np.zeros(0, dtype=np.int64)
        self.k, self.max_n = k, max_n
        self.ngrams = {n: NgramCounts(n, k, empty, empty, empty) for n in range(1, max_n + 1)}
        self.cooc_keys, self.cooc_counts = empty, empty
        self.n_programs = self.n_tokens = 0

    @classmethod
    def of(cls, corpus: Corpus, max_n: int) -> ShardCounts:
        out = cls(corpus.k, max_n)
        out.ngrams = {n: count_ngrams(corpus, n) for n in range(1, max_n + 1)}
        out.cooc_keys, out.cooc_counts = cooccurrence_counts(corpus)
        out.n_programs, out.n_tokens = corpus.n_programs, corpus.n_tokens
        return out

    def add(self, other: ShardCounts) -> None:
        for n in list(self.ngrams):
            old, theirs = self.ngrams.pop(n), other.ngrams[n]
            table = [old.keys, old.counts, old.doc_freq]
            del old  # `table` alone holds the arrays, so each is freed as it is replaced
            _merge_into(table, [theirs.keys, theirs.counts, theirs.doc_freq])
            self.ngrams[n] = NgramCounts(n, self.k, *table)
        table = [self.cooc_keys, self.cooc_counts]
        self.cooc_keys = self.cooc_counts = np.zeros(0, dtype=np.int64)
        _merge_into(table, [other.cooc_keys, other.cooc_counts])
        self.cooc_keys, self.cooc_counts = table
        self.n_programs += other.n_programs
        self.n_tokens += other.n_tokens


#: rows of a table moved at a time when a merge makes room for a shard's new keys (8 MiB)
MERGE_CHUNK = 1 << 20


def _merge_into(table: list[np.ndarray], more: list[np.ndarray]) -> None:
    """Add the sorted table `more` ([distinct keys, values...]) into the sorted `table` of the
    same layout, in place: values of keys both hold are summed into `table`'s arrays, keys only
    `more` holds are inserted at their sorted positions (`_insert_in_place`). Beyond the two
    tables the merge holds arrays the size of `more` and `MERGE_CHUNK` rows, never a copy of a
    `table` array (`np.insert` made one: the largest order's keys, gigabytes at 100M codes)."""
    keys, more_keys = table[0], more[0]
    pos = np.searchsorted(keys, more_keys)
    hit = np.zeros(more_keys.size, dtype=bool)
    if keys.size:
        hit = keys[np.minimum(pos, keys.size - 1)] == more_keys
    at, new, fresh = pos[hit], pos[~hit], np.flatnonzero(~hit)
    del keys, pos
    for mine, theirs in zip(table[1:], more[1:], strict=True):
        mine[at] += theirs[hit]  # keys are distinct: no index repeats, += is exact
    del mine  # a name still bound to an array of `table` would stop it growing in place
    for i, theirs in enumerate(more):
        _insert_in_place(table, i, new, theirs[fresh])


def _insert_in_place(
    table: list[np.ndarray], i: int, before: np.ndarray, values: np.ndarray
) -> None:
    """`table[i] = np.insert(table[i], before, values)` without a second array: the array grows
    by `ndarray.resize` (glibc `realloc`, which moves a large block's pages with `mremap`
    instead of copying them; checked on Linux x86-64, glibc 2.36, by the resident size in
    `python -m bench.bench_mine`), then its rows move up from the back, `MERGE_CHUNK` at a
    time, and `values` fill the gaps. `before` is sorted (the positions of sorted keys)."""
    array = table[i]
    table[i] = np.zeros(0, dtype=array.dtype)  # `array` alone refers to it: resize checks that
    if values.size == 0 or array.size == 0:  # nothing to insert, or nothing to insert into
        table[i] = values if array.size == 0 else array
        return
    if array.base is not None or not array.flags.owndata:
        array = array.copy()  # a view (or an unpickled buffer) cannot grow in place
    old = array.size
    array.resize(old + values.size, refcheck=True)
    # row r moves to r + (new keys inserted at or before r). From the back, a chunk's targets
    # lie at or after its sources and after every row not yet moved, so none is overwritten
    # before it moves; rows before the first insertion stay where they are.
    hi = old
    while hi > before[0]:
        lo = max(hi - MERGE_CHUNK, int(before[0]))
        first, last = np.searchsorted(before, [lo, hi - 1], side="right")
        # shift of row lo + j: insertions at or before lo, plus those in (lo, lo + j]
        shift = np.bincount(before[first:last] - lo, minlength=hi - lo)
        shift[0] += first
        np.cumsum(shift, out=shift)
        shift += np.arange(lo, hi)
        array[shift] = array[lo:hi].copy()
        hi = lo
    array[before + np.arange(before.size)] = values
    table[i] = array


def _corpus(programs: Programs, name: str, k: int | None) -> Corpus:
    return from_programs(programs, name, name, k)


def count_shard(args: tuple[str, str, int | None, int]) -> ShardCounts:
    """Worker: one shard's counts (the shard is read and checked in the worker)."""
    from strop.runs import read_programs

    path, name, k, max_n = args
    try:
        programs = read_programs(path, k)
    except RunFolderError as exc:
        raise CorpusError(str(exc)) from None
    return ShardCounts.of(_corpus(programs, name, k), max_n)


def stream_counts(
    path: str | Path, max_n: int, k: int | None = None, workers: int = 0
) -> tuple[ShardCounts, dict[str, Any]]:
    """Exact n-gram and co-occurrence counts of a programs dataset, one shard at a time (in
    `workers` processes when > 0), and its manifest."""
    from strop.runs import read_manifest, sha256_of

    try:
        folder, manifest = read_manifest(path)
    except RunFolderError as exc:
        raise CorpusError(str(exc)) from None
    k = k if k is not None else manifest.get("codebook_size")
    if k is None:
        raise CorpusError(f"{folder}: manifest records no codebook_size; pass --k")
    check_packable(int(k), max(max_n, 2))
    for record in manifest["shards"]:  # the checksums first: counts of a changed shard are wrong
        if sha256_of(folder / record["file"]) != record["sha256"]:
            raise CorpusError(f"{folder / record['file']}: sha256 differs from manifest.json")
    jobs = [(str(folder / r["file"]), r["file"], int(k), max_n) for r in manifest["shards"]]
    total = ShardCounts(int(k), max_n)
    if workers > 0:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: deque[Future[ShardCounts]] = deque()
            for job in jobs:  # a bounded window, merged in manifest order
                pending.append(pool.submit(count_shard, job))
                if len(pending) >= 2 * workers:
                    total.add(pending.popleft().result())
            while pending:
                total.add(pending.popleft().result())
    else:
        for job in jobs:
            total.add(count_shard(job))
    return total, manifest


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded uniform sample without replacement (all rows if fewer)."""
    if n_rows <= size:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))


def read_sample(path: str | Path, rows: np.ndarray, k: int | None = None) -> Programs:
    """The programs at global row indices `rows` (sorted), reading one shard at a time."""
    from strop.runs import concat_programs

    parts: list[Programs] = []
    start = 0
    meta: dict[str, Any] = {}
    for record, programs in _shards(path, k):
        stop = start + record["rows"]
        lo, hi = np.searchsorted(rows, [start, stop])
        if hi > lo:
            part = programs.subset(rows[lo:hi] - start)
            part.codes = [np.array(c) for c in part.codes]  # own copies, not views of the shard
            parts.append(part)
        meta = programs.meta
        start = stop
    return concat_programs(parts, meta)


def exact_codebook_stats(unigrams: NgramCounts, k: int) -> dict[str, float]:
    """`grammar.ngrams.codebook_stats` from merged unigram counts (the whole dataset)."""
    counts = np.zeros(k, dtype=np.float64)
    counts[unigrams.keys] = unigrams.counts
    return codebook_stats_of_counts(counts)


def _shards(path: str | Path, k: int | None) -> Iterator[tuple[dict[str, Any], Programs]]:
    from strop.runs import iter_shards

    try:
        yield from iter_shards(path, k)
    except RunFolderError as exc:
        raise CorpusError(str(exc)) from None
