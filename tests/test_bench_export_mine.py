"""`python -m bench --only export mine` at toy size (issue 28 item 6): the runner takes the two
opt-in areas, every row is in the JSON with its fields, and the counts-equal check compares."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench import bench_mine
from bench.__main__ import main as bench_main
from grammar.mine import mine_path
from strop.runs import read_programs, write_programs

EXPORT_KEYS = {
    "one_process_images_per_s",
    "one_process_encode_images_per_s",
    "one_process_encode_images_per_cpu_s",
    "torchrun_images_per_s_per_process",
    "torchrun_speedup",
    "torchrun_cpu_seconds",
    "torchrun_equals_one_process",
    "sharded_peak_rss",
    "torchrun_rank_peak_rss",
}
MINE_KEYS = {
    "subset_counts_equal",
    "subset_stream_peak_rss",
    "subset_stream_seconds",
    "full_write_seconds",
    "full_stream_peak_rss",
    "full_stream_seconds",
    "full_counts_mib",
    "full_peak_beyond_counts",
    "full_sample_programs",
}


@pytest.mark.slow  # a training, three exports and four mines (~40 s); CI runs it (-m slow)
def test_the_runner_writes_every_export_and_mine_row(tmp_path, monkeypatch):
    for name, value in {
        "STROP_BENCH_EXPORT_IMAGES": "8",
        "STROP_BENCH_EXPORT_STEPS": "1",
        "STROP_BENCH_MINE_CODES": "30000",
        "STROP_BENCH_MINE_SUBSET_CODES": "12000",
        "STROP_BENCH_MINE_SHARD_ROWS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "bench.json"
    assert bench_main(["--only", "export", "mine", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    by_key = {(r["area"], r["key"]): r for r in rows}
    assert {k for a, k in by_key if a == "export"} == EXPORT_KEYS
    assert {k for a, k in by_key if a == "mine"} == MINE_KEYS
    for row in rows:
        assert row["name"] and row["unit"] and isinstance(row["value"], float)
        if "baseline" in row:  # every ratio is value / baseline, measured in the same run
            # value and baseline are shown to 3 decimals, the ratio is of the unrounded pair:
            # it lies in the range their rounding allows (wide when the baseline is tiny)
            v, b, half = row["value"], row["baseline"], 0.0005
            low = max(v - half, 0.0) / (b + half)
            high = (v + half) / (b - half) if b > half else float("inf")
            assert low - 0.001 <= row["ratio"] <= high + 0.001, row
    assert by_key["mine", "subset_counts_equal"]["value"] == 1.0
    assert by_key["export", "torchrun_equals_one_process"]["value"] == 1.0
    assert 50 < by_key["mine", "subset_stream_peak_rss"]["value"] < 4096  # MiB of a real child
    assert (
        by_key["mine", "full_counts_mib"]["value"] > by_key["mine", "full_counts_mib"]["baseline"]
    )
    assert by_key["mine", "full_sample_programs"]["value"] > 200  # at toy size: every program


def test_the_subset_is_the_first_programs_of_the_full_dataset(tmp_path):
    small = bench_mine.write_synthetic_dataset(tmp_path / "small", 5_000, shard_rows=60)
    full = bench_mine.write_synthetic_dataset(tmp_path / "full", 20_000, shard_rows=60)
    assert 5_000 - 32 < small["codes"] <= 5_000 and 20_000 - 32 < full["codes"] <= 20_000
    a, b = read_programs(tmp_path / "small"), read_programs(tmp_path / "full")
    assert len(a) == small["programs"] and small["shards"] == -(-small["programs"] // 60)
    assert sum(len(c) for c in a.codes) == small["codes"]
    assert a.image_id == b.image_id[: len(a)]
    assert all(np.array_equal(x, y) for x, y in zip(a.codes, b.codes, strict=False))


def test_counts_equal_fails_when_a_count_differs(tmp_path):
    """The check the benchmark reports is a comparison: equal outputs pass, one changed
    count (in ngrams.tsv or only in the summary's per-order totals) fails it."""
    bench_mine.write_synthetic_dataset(tmp_path / "ds", 20_000, shard_rows=300)
    write_programs(tmp_path / "ds.parquet", read_programs(tmp_path / "ds"))
    options = {"null_replicates": 0, "sample_programs": 200}
    mine_path(tmp_path / "ds", out=tmp_path / "stream", **options)
    mine_path(tmp_path / "ds.parquet", out=tmp_path / "memory", **options)
    stream, memory = tmp_path / "stream", tmp_path / "memory"
    assert bench_mine.counts_equal(stream, memory)

    changed = tmp_path / "changed"
    shutil.copytree(memory, changed)
    lines = (changed / "ngrams.tsv").read_text().splitlines()
    n, gram, count, docs = lines[5].split("\t")
    lines[5] = "\t".join([n, gram, str(int(count) + 1), docs])
    (changed / "ngrams.tsv").write_text("\n".join(lines) + "\n")
    assert not bench_mine.counts_equal(stream, changed)

    shutil.copy(memory / "ngrams.tsv", changed / "ngrams.tsv")
    assert bench_mine.counts_equal(stream, changed)
    summary = json.loads((changed / "summary.json").read_text())
    summary["ngrams"]["4"]["occurrences"] += 1  # a singleton 4-gram: not in ngrams.tsv
    (changed / "summary.json").write_text(json.dumps(summary))
    assert not bench_mine.counts_equal(stream, changed)


def test_counts_bytes_are_the_exact_tables_of_the_summary():
    summary = {
        "ngrams": {"1": {"types": 10}, "2": {"types": 30}},
        "pairs_exact": {"any": {"types": 7}},
    }
    assert bench_mine.counts_bytes(summary) == 24 * 40 + 16 * 7
