"""Benchmark of mining a programs dataset in bounded memory (issue 28 items 4 and 6).

What it measures, each `strop-grammar mine` in a child process (wall time and peak RSS from
`bench.measure`):
- a synthetic programs dataset of `codes` codes (default 100M) mined shard by shard;
- its prefix of `subset_codes` codes (default 10M) mined twice: as a programs dataset (the
  streaming miner) and as one `programs.parquet` (the in-memory miner, the baseline). Their
  n-gram counts must be equal (`counts_equal`: `ngrams.tsv` byte for byte, plus the per-order
  types and occurrences, which cover the n-grams seen once that the file leaves out);
- the counts' own size (keys, counts and document frequencies of every order, and the "any"
  co-occurrence table, from `summary.json`) beside each streaming peak, so the row "peak RSS
  beyond the counts" shows whether memory grows with the corpus for any other reason.

Rows carry a stable `key` besides `name`; `ratio = value / baseline` throughout (for memory
and time below 1 means less than the baseline).

The corpus is `bench.bench_grammar.synthetic_corpus` (Zipf-like codes over K = 1024, lengths
8-32, planted two-code phrases) generated chunk by chunk with seeds 0, 1, 2, ... and written as
it is made with the exporter's own `ShardWriter` and `write_manifest` (the documented programs
dataset format); a prefix of the same stream is the subset, so the subset's programs are the
first programs of the full dataset. Every mine runs with `--null-replicates 1`: the nulls are
computed on the sample (streaming) or the whole corpus (in memory) alike and are not what this
measures. `python -m bench.bench_mine [--codes N] [--subset-codes N] [--quick]`; under
`python -m bench --only mine` the sizes come from `STROP_BENCH_MINE_CODES`,
`STROP_BENCH_MINE_SUBSET_CODES` and `STROP_BENCH_MINE_SHARD_ROWS` where set (the tests' tiny run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_grammar import K, synthetic_corpus
from bench.measure import Measured, env_int, measure

CODES = 100_000_000
SUBSET_CODES = 10_000_000
QUICK_CODES, QUICK_SUBSET_CODES = 4_000_000, 1_000_000
#: programs generated per chunk (one `synthetic_corpus` call, ~400k codes)
CHUNK_PROGRAMS = 20_000
#: options shared by every mine of this benchmark
MINE_OPTIONS = ["--quiet", "--null-replicates", "1"]


def write_synthetic_dataset(
    folder: Path, n_codes: int, shard_rows: int = 100_000, chunk_programs: int = CHUNK_PROGRAMS
) -> dict[str, int]:
    """A programs dataset of the first programs of the synthetic stream holding at most
    `n_codes` codes, written chunk by chunk (memory holds one chunk and one row group).
    Returns its programs, codes and shards."""
    from strop.evaluation.programs_dataset import Shard, ShardWriter, shard_name, write_manifest
    from strop.runs import Programs

    folder.mkdir(parents=True)
    meta = {"codebook_size": K, "length_mode": "synthetic", "weights": None}
    shards: list[Shard] = []
    writer: ShardWriter | None = None
    rows = codes = seed = shard_start = 0
    while codes < n_codes:
        chunk = synthetic_corpus(chunk_programs, seed=seed, k=K)
        seed += 1
        # whole programs only: stop after the last one that fits in n_codes
        take = min(
            int(np.searchsorted(chunk.offsets, n_codes - codes, side="right")) - 1, chunk.n_programs
        )
        if take <= 0:
            break
        offsets, at = chunk.offsets, 0
        while at < take:
            if writer is None:
                writer, shard_start = (
                    ShardWriter(folder, shard_name("train", len(shards)), meta),
                    rows,
                )
            room = min(shard_start + shard_rows - rows, take - at)
            writer.append(
                Programs(
                    codes=[chunk.codes[offsets[i] : offsets[i + 1]] for i in range(at, at + room)],
                    image_id=[f"syn_{rows + i:010d}" for i in range(room)],
                    split=["train"] * room,
                    codebook_size=K,
                )
            )
            at, rows = at + room, rows + room
            if rows - shard_start == shard_rows:
                writer.close()
                shards.append(Shard("train", len(shards), shard_start, rows))
                writer = None
        codes += int(offsets[take])
        if take < chunk.n_programs:
            break
    if writer is not None:
        writer.close()
        shards.append(Shard("train", len(shards), shard_start, rows))
    write_manifest(folder, shards, meta)
    return {"programs": rows, "codes": codes, "shards": len(shards)}


def mine(path: Path, out: Path) -> tuple[Measured, dict[str, Any]]:
    """`strop-grammar mine PATH` in a child process; its measurement and summary.json."""
    command = [sys.executable, "-m", "grammar.cli", "mine", str(path), "--out", str(out)]
    measured = measure(command + MINE_OPTIONS, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return measured, json.loads((out / "summary.json").read_text())


def counts_bytes(summary: dict[str, Any]) -> int:
    """Bytes of the exact count tables a streaming mine holds (int64 keys, counts, doc freq per
    n-gram order; int64 keys and counts of the "any" co-occurrences)."""
    ngram_types = sum(int(block["types"]) for block in summary["ngrams"].values())
    return 24 * ngram_types + 16 * int(summary["pairs_exact"]["any"]["types"])


def counts_equal(a: Path, b: Path) -> bool:
    """Whether two mine outputs hold the same n-gram counts: `ngrams.tsv` byte for byte, and
    the same corpus size and per-order types and occurrences in `summary.json`."""
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))

    def totals(s: dict[str, Any]) -> tuple:
        per_order = {n: (g["types"], g["occurrences"], g["top"]) for n, g in s["ngrams"].items()}
        return s["n_programs"], s["n_tokens"], per_order

    same_file = (a / "ngrams.tsv").read_bytes() == (b / "ngrams.tsv").read_bytes()
    return same_file and totals(sa) == totals(sb)


def _row(key: str, name: str, value: float, unit: str, baseline: float | None) -> dict:
    row: dict[str, Any] = {"key": key, "name": name, "value": round(value, 3), "unit": unit}
    if baseline is not None:
        row["baseline"] = round(baseline, 3)
        row["ratio"] = round(value / baseline, 3) if baseline else None
    return row


def run(
    quick: bool = False,
    codes: int | None = None,
    subset_codes: int | None = None,
    shard_rows: int = 100_000,
    work_dir: Path | None = None,
) -> list[dict]:
    """Rows of this benchmark; every file goes to a temporary folder (under `work_dir`)."""
    codes = codes or env_int("STROP_BENCH_MINE_CODES") or (QUICK_CODES if quick else CODES)
    subset_codes = (
        subset_codes
        or env_int("STROP_BENCH_MINE_SUBSET_CODES")
        or (QUICK_SUBSET_CODES if quick else SUBSET_CODES)
    )
    shard_rows = env_int("STROP_BENCH_MINE_SHARD_ROWS") or shard_rows
    if subset_codes > codes:
        raise ValueError(f"subset_codes {subset_codes:,} exceeds codes {codes:,}")
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="bench_mine_") as tmp:
        sub = _subset_rows(Path(tmp), subset_codes, shard_rows)
        return sub.rows + _full_rows(Path(tmp), codes, shard_rows, sub)


@dataclass
class _Subset:
    """The prefix's rows and what the full corpus's rows compare with."""

    rows: list[dict]
    written: dict
    write_seconds: float
    stream: Measured
    summary: dict


def _subset_rows(root: Path, subset_codes: int, shard_rows: int) -> _Subset:
    """The prefix mined streaming and in memory: counts equal, peak memory, wall time."""
    from strop.runs import read_dataset, write_programs

    start = time.perf_counter()
    sub = write_synthetic_dataset(root / "subset", subset_codes, shard_rows)
    write_seconds = time.perf_counter() - start
    write_programs(root / "subset.parquet", read_dataset(root / "subset"))
    stream_sub, s_sub = mine(root / "subset", root / "out_stream_subset")
    memory_sub, _ = mine(root / "subset.parquet", root / "out_memory_subset")
    equal = counts_equal(root / "out_stream_subset", root / "out_memory_subset")
    what = f"{sub['codes']:,} codes ({sub['programs']:,} programs, {sub['shards']} shards)"
    rows = [
        _row(
            "subset_counts_equal",
            f"n-gram counts equal, streaming vs in-memory, {what}",
            float(equal),
            "bool",
            None,
        ),
        _row(
            "subset_stream_peak_rss",
            f"peak RSS, streaming mine of {what} vs in-memory mine",
            stream_sub.peak_rss_mib,
            "MiB",
            memory_sub.peak_rss_mib,
        ),
        _row(
            "subset_stream_seconds",
            f"wall time, streaming mine of {what} vs in-memory mine",
            stream_sub.seconds,
            "s",
            memory_sub.seconds,
        ),
    ]
    for folder in ("subset", "subset.parquet", "out_memory_subset"):  # disk for the big one
        _remove(root / folder)
    return _Subset(rows, sub, write_seconds, stream_sub, s_sub)


def _full_rows(root: Path, codes: int, shard_rows: int, sub: _Subset) -> list[dict]:
    """The whole corpus mined streaming, each figure beside the prefix's."""
    start = time.perf_counter()
    full = write_synthetic_dataset(root / "full", codes, shard_rows)
    full_write_seconds = time.perf_counter() - start
    stream_full, s_full = mine(root / "full", root / "out_stream_full")
    what_full = f"{full['codes']:,} codes ({full['programs']:,} programs, {full['shards']} shards)"
    prefix = f"{sub.written['codes']:,}"
    mib = 2**20
    beyond_sub = sub.stream.peak_rss_bytes - counts_bytes(sub.summary)
    beyond_full = stream_full.peak_rss_bytes - counts_bytes(s_full)
    return [
        _row(
            "full_write_seconds",
            f"write synthetic programs dataset of {what_full} vs {prefix} codes",
            full_write_seconds,
            "s",
            sub.write_seconds,
        ),
        _row(
            "full_stream_peak_rss",
            f"peak RSS, streaming mine of {what_full} vs of the {prefix}-code prefix",
            stream_full.peak_rss_mib,
            "MiB",
            sub.stream.peak_rss_mib,
        ),
        _row(
            "full_stream_seconds",
            f"wall time, streaming mine of {what_full} vs of the {prefix}-code prefix",
            stream_full.seconds,
            "s",
            sub.stream.seconds,
        ),
        _row(
            "full_counts_mib",
            f"exact count tables (n-grams 1-4, any pairs), {what_full} vs the prefix",
            counts_bytes(s_full) / mib,
            "MiB",
            counts_bytes(sub.summary) / mib,
        ),
        _row(
            "full_peak_beyond_counts",
            f"peak RSS beyond the count tables, {what_full} vs the prefix",
            beyond_full / mib,
            "MiB",
            beyond_sub / mib,
        ),
        _row(
            "full_sample_programs",
            "programs in the sample (nulls, Re-Pair, significance)",
            float(s_full["sample"]["programs"]),
            "programs",
            float(sub.summary["sample"]["programs"]),
        ),
    ]


def count_phases(path: Path) -> list[dict[str, float]]:
    """Memory of `grammar.stream`'s counting, shard by shard, in this process (Linux: the
    resident high-water mark is reset through `/proc/self/clear_refs` before each phase; checked
    on kernel 6.18, glibc 2.36). Per shard, in MiB: the count tables held after its merge, and
    beyond them the resident peak of reading and counting the shard, of merging it, the
    resident size after it, and what `tracemalloc` (Python objects and NumPy arrays) saw at
    the merge's peak. Last row: resident size beyond the tables before and after glibc's
    `malloc_trim(0)` (memory freed but kept by the allocator, not held by the miner)."""
    import ctypes
    import tracemalloc

    from grammar.stream import ShardCounts, count_shard
    from strop.runs import read_manifest

    def status() -> dict[str, float]:
        lines = Path("/proc/self/status").read_text().splitlines()
        return {
            key: int(rest.split()[0]) / 1024
            for key, rest in (line.split(":", 1) for line in lines)
            if key in ("VmRSS", "VmHWM")
        }

    def reset_peaks() -> None:
        Path("/proc/self/clear_refs").write_text("5")
        tracemalloc.reset_peak()

    folder, manifest = read_manifest(path)
    k, total, rows = int(manifest["codebook_size"]), None, []
    tracemalloc.start()
    try:
        for record in manifest["shards"]:
            total = total or ShardCounts(k, 4)
            before = _tables_mib(total)
            reset_peaks()
            shard = count_shard((str(folder / record["file"]), record["file"], k, 4))
            count_hwm = status()["VmHWM"] - before
            reset_peaks()
            total.add(shard)
            del shard
            after, now = _tables_mib(total), status()
            rows.append(
                {
                    "tables": after,
                    "count_peak_beyond": count_hwm,
                    "merge_peak_beyond": now["VmHWM"] - after,
                    "resident_beyond": now["VmRSS"] - after,
                    "merge_traced_peak_beyond": tracemalloc.get_traced_memory()[1] / 2**20 - after,
                }
            )
    finally:
        tracemalloc.stop()
    held = _tables_mib(total) if total else 0.0
    resident = status()["VmRSS"] - held
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rows.append({"resident_beyond": resident, "after_malloc_trim": status()["VmRSS"] - held})
    return rows


def _tables_mib(counts: Any) -> float:
    arrays = [a for g in counts.ngrams.values() for a in (g.keys, g.counts, g.doc_freq)]
    return sum(a.nbytes for a in [*arrays, counts.cooc_keys, counts.cooc_counts]) / 2**20


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_mine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--codes", type=int, help=f"codes in the full dataset (default {CODES:,})")
    parser.add_argument(
        "--subset-codes", type=int, help=f"codes in the subset (default {SUBSET_CODES:,})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_CODES:,} and {QUICK_SUBSET_CODES:,}"
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument(
        "--phases",
        type=Path,
        metavar="DATASET",
        help="instead: memory of counting DATASET shard by shard, per phase (`count_phases`)",
    )
    args = parser.parse_args(argv)
    if args.phases:
        for row in count_phases(args.phases):
            print(json.dumps({key: round(value, 1) for key, value in row.items()}))
        return 0
    rows = run(args.quick, args.codes, args.subset_codes)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
