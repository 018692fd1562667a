"""`strop-grammar mine` over a programs dataset: shard counts merged exactly (issue 28 item 4).

The dataset is written with the exporter's own shard writer and manifest, from synthetic
programs with structure (repeated motifs) so n-grams recur within and across shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from grammar.cli import app
from grammar.corpus import from_programs
from grammar.ngrams import count_ngrams
from grammar.pairs import cooccurrence_counts
from grammar.stream import read_sample, sample_rows, stream_counts
from strop.evaluation.programs_dataset import ShardWriter, plan_shards, write_manifest
from strop.runs import Programs

K = 12
SIZES = {"train": 230, "val": 70}


def synthetic(n: int, split: str, rng: np.random.Generator) -> Programs:
    motifs = [rng.integers(0, K, size=m) for m in (2, 3, 3, 4)]
    codes = []
    for _ in range(n):
        parts = [motifs[i] for i in rng.integers(0, 4, size=rng.integers(1, 4))]
        codes.append(np.concatenate([*parts, rng.integers(0, K, size=rng.integers(0, 3))]))
    ids = [f"{split}_{i:05d}" for i in range(n)]
    return Programs(codes=codes, image_id=ids, split=[split] * n, codebook_size=K)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Programs]:
    """A 300-program dataset in 50-row shards, and the same programs in memory."""
    from strop.runs import concat_programs

    rng = np.random.default_rng(0)
    whole = concat_programs([synthetic(n, s, rng) for s, n in SIZES.items()], {})
    whole.codebook_size = K
    folder = tmp_path_factory.mktemp("ds") / "programs"
    folder.mkdir()
    shards = plan_shards(SIZES, 50)
    meta = {"codebook_size": K, "length_mode": "head", "weights": None}
    offset = {"train": 0, "val": SIZES["train"]}
    for shard in shards:
        writer = ShardWriter(folder, shard.name, meta)
        first = offset[shard.split] + shard.start
        writer.append(whole.subset(range(first, first + shard.rows)))
        writer.close()
    write_manifest(folder, shards, meta)
    return folder, whole


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_counts_merge_to_the_in_memory_counts(dataset, workers):
    folder, whole = dataset
    counts, manifest = stream_counts(folder, max_n=4, workers=workers)
    assert len(manifest["shards"]) == 7  # 230 train rows in 5 shards, 70 val rows in 2
    corpus = from_programs(whole, "all", "memory", K)
    assert (counts.n_programs, counts.n_tokens) == (corpus.n_programs, corpus.n_tokens)
    for n in range(1, 5):
        exact = count_ngrams(corpus, n)
        merged = counts.ngrams[n]
        assert exact.n_types > 5 and (exact.doc_freq > 1).any()  # recurs across shards
        np.testing.assert_array_equal(merged.keys, exact.keys)
        np.testing.assert_array_equal(merged.counts, exact.counts)
        np.testing.assert_array_equal(merged.doc_freq, exact.doc_freq)
    keys, cooc = cooccurrence_counts(corpus)
    np.testing.assert_array_equal(counts.cooc_keys, keys)
    np.testing.assert_array_equal(counts.cooc_counts, cooc)


def test_the_sample_is_the_seeded_rows_read_shard_by_shard(dataset):
    folder, whole = dataset
    rows = sample_rows(len(whole), 40, seed=3)
    assert rows.size == 40 and np.all(np.diff(rows) > 0)
    sample = read_sample(folder, rows)
    assert sample.image_id == [whole.image_id[i] for i in rows]
    assert all(np.array_equal(a, whole.codes[i]) for a, i in zip(sample.codes, rows, strict=True))
    assert sample_rows(10, 40, seed=3).tolist() == list(range(10))


def test_mine_cli_on_a_dataset_writes_exact_counts_and_names_its_sample(dataset, tmp_path):
    from typer.testing import CliRunner

    folder, whole = dataset
    out = tmp_path / "g"
    result = CliRunner().invoke(
        app,
        ["mine", str(folder), "--out", str(out), "--quiet", "--sample-programs", "120"]
        + ["--null-replicates", "1", "--ngram-min-count", "1"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    corpus = from_programs(whole, "all", "memory", K)
    assert summary["n_programs"] == 300 and summary["n_tokens"] == corpus.n_tokens
    assert summary["sample"]["programs"] == 120 and summary["sample"]["of_programs"] == 300
    assert summary["ngrams"]["3"]["occurrences"] == count_ngrams(corpus, 3).n_occurrences
    rows = [line.split("\t") for line in (out / "ngrams.tsv").read_text().splitlines()[1:]]
    assert sum(int(r[2]) for r in rows if r[0] == "2") == count_ngrams(corpus, 2).n_occurrences


def test_the_sample_holds_its_own_codes_not_the_shards_they_came_from(dataset):
    """A program read from parquet is a view of its shard's codes: a sample that kept the
    views would keep every shard it touched alive, growing with the corpus."""
    folder, whole = dataset
    sample = read_sample(folder, sample_rows(len(whole), 7, seed=1))  # ~one row per shard

    def owner(a: np.ndarray) -> np.ndarray:
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a

    held = {id(owner(c)): owner(c).nbytes for c in sample.codes}
    assert sum(held.values()) <= sum(c.nbytes for c in sample.codes)


def test_top_ngrams_rank_in_bounded_memory(monkeypatch):
    """`top` on a dataset's exact counts sorted the whole table (2/3 of its size again, GBs
    at 100M codes); chunk by chunk it gives the same ranking, ties by key across chunks."""
    import tracemalloc

    import grammar.ngrams as ngrams

    rng = np.random.default_rng(0)
    n = 3_000_000
    keys = np.sort(rng.choice(10**12, size=n, replace=False))
    counts = rng.integers(1, 50, n)  # many ties at every count
    table = ngrams.NgramCounts(4, 1000, keys, counts, counts.copy())
    expected = np.lexsort((keys, -counts))[:25]
    tracemalloc.start()
    got = table.top(25)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [g["count"] for g in got] == counts[expected].tolist()
    assert [g["ngram"] for g in got] == [
        " ".join(map(str, r)) for r in table.unpack(keys[expected])
    ]
    assert peak < keys.nbytes / 2  # a sixth of the table (3 arrays of keys.nbytes); was 2/3
    monkeypatch.setattr(ngrams, "TOP_CHUNK", 7)  # ties straddle chunk edges
    small = ngrams.NgramCounts(2, 5, np.arange(60), np.arange(60) % 4, np.ones(60, np.int64))
    assert [g["ngram"] for g in small.top(20)] == [
        " ".join(map(str, r))
        for r in small.unpack(np.lexsort((np.arange(60), -(np.arange(60) % 4)))[:20])
    ]


def test_the_merge_grows_the_running_table_in_place(monkeypatch):
    """Merging a shard into the running counts copied the table's largest array (`np.insert`:
    gigabytes at 100M codes, growing with the corpus); in place, beyond the two tables it
    holds arrays the size of the shard's table and of `MERGE_CHUNK` rows. Same sums either way."""
    import tracemalloc

    import grammar.stream as stream
    from grammar.ngrams import NgramCounts

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 10**12, 2_000_000))
    shard_keys = np.unique(
        np.concatenate([rng.choice(keys, 20_000), rng.integers(0, 10**12, 30_000)])
    )

    def counts(k: np.ndarray, seed: int) -> NgramCounts:
        c = np.random.default_rng(seed).integers(1, 9, k.size)
        return NgramCounts(4, 1000, k, c, (c + 1) // 2)

    both = np.concatenate([keys, shard_keys])
    expected_keys, inverse = np.unique(both, return_inverse=True)
    tables = [counts(keys, 1), counts(shard_keys, 2)]
    expected = [
        np.bincount(inverse, np.concatenate([g.counts for g in tables])).astype(np.int64),
        np.bincount(inverse, np.concatenate([g.doc_freq for g in tables])).astype(np.int64),
    ]
    monkeypatch.setattr(stream, "MERGE_CHUNK", 100_000, raising=False)  # old code: none
    tracemalloc.start()  # the tables are made under it: growing one, or copying it, both count
    total, shard = stream.ShardCounts(1000, 4), stream.ShardCounts(1000, 4)
    total.ngrams[4], shard.ngrams[4] = counts(keys.copy(), 1), counts(shard_keys, 2)
    total.add(shard)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    merged = total.ngrams[4]
    np.testing.assert_array_equal(merged.keys, expected_keys)
    np.testing.assert_array_equal(merged.counts, expected[0])
    np.testing.assert_array_equal(merged.doc_freq, expected[1])
    assert (
        peak - held < keys.nbytes / 4
    )  # the shard's arrays, a few chunks; np.insert: ~keys.nbytes


def test_reuse_rate_sums_in_bounded_memory(monkeypatch):
    """`reuse_rate` on a dataset's exact counts masked and selected the whole table (up to 9/8
    of an array again, growing with the corpus); chunk by chunk it is the same share."""
    import tracemalloc

    import grammar.ngrams as ngrams

    rng = np.random.default_rng(0)
    n = 3_000_000
    counts = rng.integers(1, 50, n)
    doc_freq = np.minimum(counts, rng.integers(1, 3, n))  # about half the types recur
    table = ngrams.NgramCounts(4, 1000, np.arange(n), counts, doc_freq)
    expected = counts[doc_freq >= 2].sum() / counts.sum()
    tracemalloc.start()
    got = table.reuse_rate()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == expected and 0.3 < got < 0.9
    assert peak < counts.nbytes / 4  # was the mask (1/8) and the selection (about 1/2)
    monkeypatch.setattr(ngrams, "TOP_CHUNK", 7)
    assert table.reuse_rate() == expected


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_bench_count_phases_measures_each_shard_of_a_dataset(dataset):
    """`python -m bench.bench_mine --phases DATASET`: one row per shard, tables as merged."""
    from bench.bench_mine import count_phases

    folder, _ = dataset
    rows = count_phases(folder)
    counts, manifest = stream_counts(folder, max_n=4)
    assert len(rows) == len(manifest["shards"]) + 1
    held = sum(g.keys.nbytes * 3 for g in counts.ngrams.values()) + counts.cooc_keys.nbytes * 2
    assert rows[-2]["tables"] == pytest.approx(held / 2**20)
    assert all(r["count_peak_beyond"] > 0 and r["merge_peak_beyond"] > 0 for r in rows[:-1])
    assert set(rows[-1]) == {"resident_beyond", "after_malloc_trim"}


WRITE_PEAK = """
import sys
import numpy as np
import pyarrow as pa
from pathlib import Path
from grammar import output
from grammar.corpus import Corpus
from grammar.ngrams import count_ngrams

output.TSV_BLOCK_ROWS = int(sys.argv[2])
rng = np.random.default_rng(0)
codes = rng.integers(0, 1000, 400_000)
corpus = Corpus(codes, np.arange(0, codes.size + 1, 8), 1000, "c", "synthetic", "given")
grams = {3: count_ngrams(corpus, 3)}
before = pa.default_memory_pool().max_memory()
output.write_ngrams_tsv(Path(sys.argv[1]), grams)
print(grams[3].counts.size, pa.default_memory_pool().max_memory() - before)
"""


def test_ngrams_tsv_is_written_block_by_block_with_the_same_bytes(tmp_path: Path) -> None:
    """`ngrams.tsv` is formatted `TSV_BLOCK_ROWS` rows at a time: Arrow's peak while writing
    stays a fraction of what every row's strings at once take, and the bytes are those of one
    block (the former whole-table write)."""
    import subprocess
    import sys

    def write(block_rows: int) -> tuple[bytes, int, int]:
        out = tmp_path / f"ngrams-{block_rows}.tsv"
        done = subprocess.run(
            [sys.executable, "-c", WRITE_PEAK, str(out), str(block_rows)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows, peak = map(int, done.stdout.split())
        return out.read_bytes(), rows, peak

    whole, rows, whole_peak = write(1 << 30)
    blocked, _, blocked_peak = write(4096)
    assert rows > 40_000 and blocked == whole
    assert blocked_peak < whole_peak / 4, (blocked_peak, whole_peak)
