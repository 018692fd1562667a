"""Tab-separated outputs (`ngrams.tsv`, `pairs.tsv`) written through pyarrow's CSV writer.

Design decisions
- Column names and order are the contract in `docs/FORMATS.md`: `n ngram count doc_freq`
  and `pair kind count pmi llr q_value`, then the extra columns `npmi expected_null q_null`
  (expected count and q-value under the null that fits the kind: within-program shuffle for
  adjacent pairs, unigram resampling for `any` pairs; see `grammar.pairs`).
- A value that is not defined (no null tests on a tiny corpus) is an empty field.
- n-gram strings are joined in Arrow (`binary_join_element_wise`), not in Python: a run has
  millions of distinct 4-grams and a Python loop would dominate the whole `mine`.
- Files are written to a temporary name and renamed, like every file of the run folder, and
  get the umask's ordinary permissions (`atomic_write`; a bare temporary file is 0600).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from grammar.ngrams import NgramCounts
from grammar.pairs import PairTable
from strop.atomic import atomic_write

NGRAM_COLUMNS = ("n", "ngram", "count", "doc_freq")
PAIR_COLUMNS = ("pair", "kind", "count", "pmi", "llr", "q_value", "npmi", "expected_null", "q_null")


def _join_codes(matrix: np.ndarray) -> pa.Array:
    """Rows of an int matrix as space-separated strings."""
    columns = [pc.cast(pa.array(matrix[:, j]), pa.string()) for j in range(matrix.shape[1])]
    if len(columns) == 1:
        return columns[0]
    return pc.binary_join_element_wise(*columns, " ")


def _write_tsv(path: Path, table: pa.Table) -> None:
    """Header line written by hand: Arrow's writer quotes header names even with quoting off."""
    _write_tsv_blocks(path, table.column_names, iter([table]))


def _write_tsv_blocks(path: Path, columns: list[str], blocks: Iterator[pa.Table]) -> None:
    """One TSV written block by block, so a large table is never built whole (the rows of one
    block at a time); the bytes equal one `write_csv` of the blocks concatenated."""
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(("\t".join(columns) + "\n").encode())
            for block in blocks:
                if block.num_rows:
                    pacsv.write_csv(block, handle, write_options=options)

    atomic_write(path, write)


def _floats(values: np.ndarray | None, n: int) -> pa.Array:
    if values is None:
        return pa.nulls(n, pa.float64())
    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, mask=~np.isfinite(values))


def _pick(values: np.ndarray | None, order: np.ndarray) -> np.ndarray | None:
    return None if values is None else np.asarray(values)[order]


#: rows of `ngrams.tsv` formatted at a time: bounds its writing to a few hundred MB whatever
#: the corpus (every kept n-gram's strings at once grew with it: 15.6M rows at 100M codes)
TSV_BLOCK_ROWS = 1 << 20


def write_ngrams_tsv(path: Path, ngrams: dict[int, NgramCounts], min_count: int = 1) -> None:
    """`n ngram count doc_freq`, orders ascending, then count descending, then n-gram."""

    def blocks() -> Iterator[pa.Table]:
        for n, g in sorted(ngrams.items()):
            keep = np.flatnonzero(g.counts >= min_count)
            keep = keep[np.lexsort((g.keys[keep], -g.counts[keep]))]
            for start in range(0, keep.size, TSV_BLOCK_ROWS):
                rows = keep[start : start + TSV_BLOCK_ROWS]
                yield pa.table(
                    {
                        "n": pa.array(np.full(rows.size, n, dtype=np.int64)),
                        "ngram": _join_codes(g.unpack(g.keys[rows])),
                        "count": pa.array(g.counts[rows]),
                        "doc_freq": pa.array(g.doc_freq[rows]),
                    }
                )

    _write_tsv_blocks(path, list(NGRAM_COLUMNS), blocks())


def write_pairs_tsv(path: Path, tables: list[PairTable]) -> None:
    """`pair kind count pmi llr q_value npmi expected_null q_null`, strongest G^2 first per kind."""
    parts = []
    for t in tables:
        order = np.lexsort((t.b, t.a, -t.llr))
        n = order.size
        parts.append(
            pa.table(
                {
                    "pair": _join_codes(np.stack([t.a[order], t.b[order]], axis=1)),
                    "kind": pa.array([t.kind] * n, pa.string()),
                    "count": pa.array(t.count[order]),
                    "pmi": _floats(_pick(t.pmi, order), n),
                    "llr": _floats(_pick(t.llr, order), n),
                    "q_value": _floats(_pick(t.q_value, order), n),
                    "npmi": _floats(_pick(t.npmi, order), n),
                    "expected_null": _floats(_pick(t.expected_null, order), n),
                    "q_null": _floats(_pick(t.q_null, order), n),
                }
            )
        )
    _write_tsv(path, pa.concat_tables(parts) if parts else pa.table({c: [] for c in PAIR_COLUMNS}))
