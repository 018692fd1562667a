"""`summary.json` of one mined corpus: each headline statistic beside its nulls' mean and sd,
the n-gram, pair and distance-MI tables, and the Re-Pair grammar's top rules (`grammar.mine`
computes them; JSON has no NaN, so an undefined statistic is null).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grammar import __version__
from grammar.ngrams import NgramCounts, codebook_stats
from grammar.pairs import PairTable


def beside(observed: dict[str, float], nulls: dict[str, list[dict[str, float]]]) -> dict[str, dict]:
    """{stat: {"observed": x, "null_<kind>": mean, "null_<kind>_sd": sd}}."""
    out: dict[str, dict] = {}
    for name, value in observed.items():
        row: dict[str, float | None] = {"observed": clean(value)}
        for kind, reps in nulls.items():
            values = np.array([r[name] for r in reps if name in r], dtype=np.float64)
            row[f"null_{kind}"] = clean(values.mean()) if values.size else None
            row[f"null_{kind}_sd"] = clean(values.std(ddof=1)) if values.size > 1 else None
        out[name] = row
    return out


def clean(value: float) -> float | None:
    """JSON has no NaN: undefined statistics are null."""
    value = float(value)
    return None if not np.isfinite(value) else value


def ngram_summary(ngrams: dict[int, NgramCounts], top: int) -> dict[str, Any]:
    """Types, occurrences, reuse rate and the `top` most frequent n-grams, for each n."""
    return {
        str(n): {
            "types": g.n_types,
            "occurrences": g.n_occurrences,
            "reuse_rate": clean(g.reuse_rate()),
            "top": g.top(top),
        }
        for n, g in ngrams.items()
    }


def corpus_summary(
    corpus, cfg, observed, nulls, extras, null_status, null_mi, grammar, repair_index
) -> dict:
    """The whole summary of a mined corpus (`cfg` a `grammar.config.MineConfig`)."""
    adj: PairTable = extras["adjacent"]
    anyp: PairTable = extras["any"]
    lengths = corpus.lengths
    summary: dict[str, Any] = {
        "run": corpus.name,
        "source": corpus.source,
        "grammar_version": __version__,
        "k": corpus.k,
        "k_source": corpus.k_source,
        "n_programs": corpus.n_programs,
        "n_tokens": corpus.n_tokens,
        **codebook_stats(corpus),
        "length": {
            "mean": float(lengths.mean()),
            "min": int(lengths.min()),
            "max": int(lengths.max()),
        },
        "null_tests": null_status,
    }
    headline = beside(observed, nulls)
    summary.update(headline)
    summary["ngrams"] = ngram_summary(extras["ngrams"], cfg.top)
    summary["pairs"] = {
        t.kind: pair_summary(t, cfg.min_count, cfg.alpha, cfg.top) for t in (adj, anyp)
    }
    summary["distance_mi"] = {
        "distances": list(range(1, cfg.max_distance + 1)),
        "observed": [clean(v) for v in extras["distance_mi"]],
        **{f"null_{k}": [clean(v) for v in np.mean(v, axis=0)] for k, v in null_mi.items() if v},
    }
    lengths_r = grammar.expansion_lengths()
    usage = grammar.usage()
    summary["repair"] = {
        "programs": int(repair_index.size),
        "tokens": grammar.n_tokens,
        "rules": grammar.n_rules,
        "grammar_size": grammar.size,
        "compression_ratio": clean(grammar.compression_ratio),
        "longest_rule": int(lengths_r.max(initial=0)),
        "top_rules": [
            {
                "rule": grammar.name(grammar.k + int(i)),
                "expands_to": " ".join(map(str, grammar.expand(grammar.k + int(i)))),
                "uses": int(usage[i]),
            }
            for i in np.argsort(-usage, kind="stable")[: cfg.top]
        ],
    }
    summary["config"] = cfg.model_dump()
    return summary


def pair_summary(table: PairTable, min_count: int, alpha: float, top: int) -> dict[str, Any]:
    """Candidates, significant counts (analytic and against the null) and the `top` by G^2."""
    out: dict[str, Any] = {
        "candidates": len(table),
        "min_count": min_count,
        "significant": table.n_significant(alpha),
        "significant_vs_null": table.n_significant(alpha, against_null=True)
        if table.q_null is not None
        else None,
    }
    order = np.argsort(-table.llr, kind="stable")[:top]
    out["top_llr"] = [
        {
            "pair": f"{int(table.a[i])} {int(table.b[i])}",
            "count": int(table.count[i]),
            "pmi": clean(table.pmi[i]),
            "llr": clean(table.llr[i]),
            "q_value": None if table.q_value is None else clean(table.q_value[i]),
        }
        for i in order
    ]
    return out
