"""`mine`: every statistic of one corpus beside its null corpora, written to `grammar/`.

Design decisions
- One function computes the headline statistics of any corpus (`corpus_stats`), and it is run
  on the observed corpus and on every null replicate alike, so observed and null numbers are
  the same computation by construction. Each headline appears in `summary.json` as
  `{"observed": x, "null_shuffle": mean, "null_shuffle_sd": sd, "null_unigram": ..., ...}`.
- Which null answers which question (see `grammar.nulls`): order statistics (adjacent pairs,
  perplexity n >= 2, code-position information, distance MI) against `shuffle`; reuse and
  co-occurrence against `unigram`. Both are reported for every statistic anyway.
- Pair significance (`grammar.pairs`): adjacent pairs get an analytic G^2 q-value
  (association against independence of the two codes, nltk's table) and a q-value against
  their exact expectation under the within-program shuffle (order beyond composition); "any"
  pairs against the unigram null. `n_significant_pairs` counts adjacent pairs significant
  against the shuffle, `n_associated_pairs` those significant by G^2; both are computed the
  same way on every null replicate, which gives their false-positive baselines beside them.
  Replicates serve the headline means; no per-pair statistic depends on a handful of them.
- Everything that depends only on each program's multiset of codes (co-occurrence, the
  shuffle expectations, the "any" pair table) is cached on the corpus and shared with its
  shuffled twins, which have the same compositions by construction.
- Re-Pair runs in pure Python; its compression ratio is computed on a seeded random sample of
  programs holding at most `repair_max_tokens` codes, the same programs (same lengths) for the
  observed corpus and one replicate of each null, so the ratios compare like with like.
- A corpus below `min_programs_for_nulls` / `min_tokens_for_nulls` is mined without null
  corpora or p-values; `summary.json["null_tests"]` says why, instead of printing p-values
  that mean nothing.
- `ngrams.tsv` lists n-grams with count >= `ngram_min_count` (default 2: the recurring pieces;
  a run of 70,000 programs has millions of 4-grams seen once, which would dominate both the
  file and the time to write it); `summary.json` keeps the full type counts. Set it to 1 for
  every n-gram.
- A programs dataset (`strop export`'s sharded form) is mined shard by shard
  (`mine_dataset`, `grammar.stream`): exact merged n-gram counts, the rest on a sample.
- A corpus' files (and an experiment's comparison) are one unit (`strop.output_unit`):
  written aside and moved in together once all are written, so a mine killed midway leaves
  the previous results whole, never files of two corpora side by side; every output folder
  is checked writable before the first corpus is mined.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from grammar.config import MineConfig
from grammar.corpus import Corpus, CorpusError, discover
from grammar.ngrams import (
    NgramCounts,
    check_packable,
    code_position_mi,
    count_all,
    count_ngrams,
)
from grammar.nulls import make_null
from grammar.pairs import (
    PairTable,
    add_null_test,
    add_significance,
    adjacent_pairs,
    any_pairs,
    distance_mi,
    shuffle_expected_adjacent,
    unigram_expected_cooccurrence,
)
from grammar.pcfg import parse_program, pcfg_text, production_probs
from grammar.perplexity import heldout_perplexity
from grammar.repair import Grammar, repair
from grammar.summary import corpus_summary, ngram_summary
from grammar.zipf import zipf_fit
from strop.atomic import OutputPathError, is_disk_full, write_error
from strop.output_unit import OutputUnit

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress


Progress = Callable[[str], None]


@dataclass
class MineResult:
    """What `mine_corpus` computed: the summary plus arrays for figures and files."""

    summary: dict[str, Any]
    ngrams: dict[int, NgramCounts]
    pairs: list[PairTable]
    grammar: Grammar
    curves: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------- statistics


def corpus_stats(
    corpus: Corpus, cfg: MineConfig, repair_index: np.ndarray | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """Headline statistics of one corpus (observed or null) and the objects behind them."""
    grams = count_all(corpus, cfg.max_n)
    stats: dict[str, float] = {}
    stats["zipf_exponent"] = zipf_fit(grams[1].counts)["exponent"]
    if cfg.max_n >= 2:
        stats["zipf_exponent_bigram"] = zipf_fit(grams[2].counts)["exponent"]
    for n, g in grams.items():
        stats[f"reuse_rate_{n}"] = g.reuse_rate()
        stats[f"types_per_token_{n}"] = g.n_types / max(g.n_occurrences, 1)
    stats["reuse_rate"] = stats.get("reuse_rate_2", stats["reuse_rate_1"])
    stats["code_position_mi"] = code_position_mi(corpus)
    mi = distance_mi(corpus, cfg.max_distance)
    stats["adjacent_mi"] = mi[0]
    ppl = heldout_perplexity(corpus, cfg.lm_orders, cfg.heldout_fraction, cfg.seed)
    for n, value in ppl.items():
        stats[f"perplexity_{n}"] = value
    bigrams = grams[2] if cfg.max_n >= 2 else count_ngrams(corpus, 2)
    adj = add_significance(adjacent_pairs(corpus, bigrams, cfg.min_count))
    add_null_test(adj, shuffle_expected_adjacent(corpus, adj.a, adj.b))
    cache_key = f"any_pairs@{cfg.min_count}"
    anyp = corpus.cache.get(cache_key)
    if anyp is None:  # depends on composition only: a shuffled twin shares it (nulls.py)
        anyp = add_significance(any_pairs(corpus, cfg.min_count))
        add_null_test(anyp, unigram_expected_cooccurrence(corpus, anyp.a, anyp.b))
        corpus.cache[cache_key] = anyp
    stats["n_significant_pairs"] = _count(adj.n_significant(cfg.alpha, against_null=True))
    stats["n_associated_pairs"] = _count(adj.n_significant(cfg.alpha))
    stats["n_significant_any_pairs"] = _count(anyp.n_significant(cfg.alpha, against_null=True))
    stats["n_candidate_pairs"] = float(len(adj))
    extras: dict[str, Any] = {
        "ngrams": grams,
        "bigrams": bigrams,
        "adjacent": adj,
        "any": anyp,
        "distance_mi": mi,
    }
    if repair_index is not None:
        rules = repair(corpus.subset(repair_index))
        stats["compression_ratio"] = rules.compression_ratio
        stats["n_rules"] = float(rules.n_rules)
        extras["grammar"] = rules
    return stats, extras


def _count(value: int | None) -> float:
    """A count of significant pairs as a float statistic; NaN when no test was run."""
    return float("nan") if value is None else float(value)


def _repair_sample(corpus: Corpus, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Random programs, in corpus order, holding at most `max_tokens` codes (at least one)."""
    order = rng.permutation(corpus.n_programs)
    fits = np.cumsum(corpus.lengths[order]) <= max_tokens
    chosen = order[fits] if fits.any() else order[:1]
    return np.sort(chosen)


def mine_corpus(
    corpus: Corpus, cfg: MineConfig | None = None, progress: Progress | None = None
) -> MineResult:
    """Every statistic of `corpus` beside its null corpora (nothing written)."""
    cfg = cfg or MineConfig()
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    corpus.validate()
    rng = np.random.default_rng(cfg.seed)
    repair_index = _repair_sample(corpus, cfg.repair_max_tokens, rng)

    say("observed corpus")
    observed, extras = corpus_stats(corpus, cfg, repair_index)
    adj: PairTable = extras["adjacent"]
    anyp: PairTable = extras["any"]

    small = (
        corpus.n_programs < cfg.min_programs_for_nulls or corpus.n_tokens < cfg.min_tokens_for_nulls
    )
    kinds = ["shuffle", "unigram"] + (["markov"] if cfg.markov_null else [])
    nulls: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    null_mi: dict[str, list[list[float]]] = {kind: [] for kind in kinds}
    curves: dict[str, np.ndarray] = {"observed_1": extras["ngrams"][1].counts}
    if cfg.max_n >= 2:
        curves["observed_2"] = extras["ngrams"][2].counts
    null_status: dict[str, Any]
    if small:
        null_status = {
            "status": "skipped",
            "reason": (
                f"corpus too small for null tests ({corpus.n_programs} programs, {corpus.n_tokens} "
                f"codes; need >= {cfg.min_programs_for_nulls} programs and >= "
                f"{cfg.min_tokens_for_nulls} codes): no p-values reported"
            ),
        }
        for table in (adj, anyp):
            table.p_value = table.q_value = table.q_null = None
        for name in ("n_significant_pairs", "n_associated_pairs", "n_significant_any_pairs"):
            observed[name] = float("nan")
    else:
        null_status = {"status": "ok", "replicates": cfg.null_replicates, "kinds": kinds}
        for kind in kinds:
            for rep in range(cfg.null_replicates):
                say(f"null {kind} {rep + 1}/{cfg.null_replicates}")
                null = make_null(kind, corpus, rng)
                stats, null_extras = corpus_stats(null, cfg, repair_index if rep == 0 else None)
                nulls[kind].append(stats)
                null_mi[kind].append(null_extras["distance_mi"])
                if rep == 0 and cfg.max_n >= 2:
                    curves[f"{kind}_2"] = null_extras["ngrams"][2].counts

    say("summary")
    grammar: Grammar = extras["grammar"]
    summary = corpus_summary(
        corpus, cfg, observed, nulls, extras, null_status, null_mi, grammar, repair_index
    )
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return MineResult(summary, extras["ngrams"], [adj, anyp], grammar, curves)


def mine_dataset(
    path: Path, name: str, cfg: MineConfig, k: int | None = None, progress: Progress | None = None
) -> MineResult:
    """Mine a programs dataset in bounded memory (`grammar.stream`): exact n-gram counts of
    every shard merged, everything else on a seeded sample of `cfg.sample_programs`."""
    from grammar.corpus import from_programs
    from grammar.stream import exact_codebook_stats, read_sample, sample_rows, stream_counts

    say = progress or (lambda _msg: None)
    say("counting shards")
    counts, manifest = stream_counts(path, max(cfg.max_n, 2), k, cfg.workers)
    rows = sample_rows(int(manifest["rows"]), cfg.sample_programs, cfg.seed)
    say(f"sample of {rows.size} programs")
    sample = from_programs(read_sample(path, rows, k), name, str(path), k)
    result = mine_corpus(sample, cfg, progress)
    result.ngrams = {n: counts.ngrams[n] for n in range(1, cfg.max_n + 1)}
    summary = result.summary
    summary.update(
        n_programs=counts.n_programs,
        n_tokens=counts.n_tokens,
        **exact_codebook_stats(counts.ngrams[1], counts.k),
    )
    summary["ngrams"] = ngram_summary(result.ngrams, cfg.top)
    summary["pairs_exact"] = {
        "adjacent": {"types": counts.ngrams[2].n_types, "count": counts.ngrams[2].n_occurrences},
        "any": {"types": int(counts.cooc_keys.size), "count": int(counts.cooc_counts.sum())},
    }
    summary["sample"] = {
        "programs": int(sample.n_programs),
        "tokens": int(sample.n_tokens),
        "of_programs": counts.n_programs,
        "seed": cfg.seed,
        "covers": "headline statistics beside their nulls, perplexity, pairs (pairs.tsv), "
        "distance MI, Re-Pair; n-gram counts (ngrams.tsv, ngrams), codebook statistics and "
        "pairs_exact are of every program",
    }
    return result


# --------------------------------------------------------------------------- files

#: One corpus' results, written and replaced as one unit (`strop.output_unit`).
UNIT = "mine"
RUN_FILES = (
    "summary.json",
    "ngrams.tsv",
    "pairs.tsv",
    "rules.txt",
    "grammar.pcfg",
    "rank_frequency.png",
)
#: An experiment's comparison over its corpora, one unit of its own.
COMPARISON_UNIT = "mine-comparison"
COMPARISON_FILES = ("grammar_comparison.md", "figures/rank_frequency.png")
COMMAND = "strop-grammar mine"


def write_outputs(result: MineResult, out_dir: Path, cfg: MineConfig) -> None:
    """summary.json, ngrams.tsv, pairs.tsv, rules.txt, grammar.pcfg (and a spot-check parse)."""
    from grammar.output import write_ngrams_tsv, write_pairs_tsv
    from strop.atomic import atomic_write_text
    from strop.runs import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    write_ngrams_tsv(out_dir / "ngrams.tsv", result.ngrams, cfg.ngram_min_count)
    write_pairs_tsv(out_dir / "pairs.tsv", result.pairs)
    g = result.grammar
    atomic_write_text(
        out_dir / "rules.txt", "\n".join(g.rule_lines()) + ("\n" if g.n_rules else "")
    )
    if g.final_length:
        atomic_write_text(out_dir / "grammar.pcfg", pcfg_text(g))
        result.summary["pcfg_spot_check"] = _spot_check(g, cfg)
    write_json(out_dir / "summary.json", result.summary)


def _spot_check(g: Grammar, cfg: MineConfig) -> dict[str, Any]:
    """Parse a few short programs with nltk's Viterbi parser; leaves must give them back."""
    rng = np.random.default_rng(cfg.seed)
    sizes = np.concatenate([np.ones(g.k, dtype=np.int64), g.expansion_lengths()])
    short = [i for i, seq in enumerate(g.sequences) if 0 < int(sizes[seq].sum()) <= 16]
    picks: np.ndarray | list[int] = (
        rng.choice(len(short), size=min(cfg.spot_check_parses, len(short)), replace=False)
        if short
        else []
    )
    probs, texts = production_probs(g), g.expansion_texts()
    parsed = 0
    for p in picks:
        codes = g.expand_sequence(g.sequences[short[int(p)]])
        tree = parse_program(g, codes, probs, texts)
        parsed += int(tree is not None and tree.leaves() == [str(c) for c in codes])
    return {"parsed": parsed, "of": len(picks), "max_length": 16}


def mine_path(
    path: str | Path,
    out: str | Path | None = None,
    max_n: int = 4,
    seed: int = 0,
    null_replicates: int = 3,
    k: int | None = None,
    progress: bool = False,
    **overrides: Any,
) -> list[dict]:
    """Mine every corpus under `path` (experiment, run, parquet or text file); the summaries.

    Writes each corpus' files to `RUN/grammar/` (or `OUT/<run>/`), and for an experiment the
    comparison table `grammar_comparison.md` and `figures/rank_frequency.png` to the experiment
    folder (or OUT); for a single corpus the figure goes beside its summary.
    """
    from grammar.compare import comparison_markdown, plot_rank_frequency, print_comparison
    from strop.atomic import atomic_write_text

    cfg = MineConfig(max_n=max_n, seed=seed, null_replicates=null_replicates, **overrides)
    packed = max(cfg.max_n, 2)  # pairs are counted as packed bigrams whatever max_n says
    if k is not None:
        check_packable(k, packed)  # a --k and --max-n that cannot work: refused before reading
    sources, experiment = discover(path, out, k)
    units = [OutputUnit(s.out_dir, UNIT, RUN_FILES, COMMAND) for s in sources]
    base = Path(out) if out is not None else Path(path)
    if experiment:
        units.append(OutputUnit(base, COMPARISON_UNIT, COMPARISON_FILES, COMMAND))
    summaries, curves = [], {}
    try:
        for unit in units:  # every output folder is writable, before any work
            unit.open()
        with _progress(progress, len(sources)) as report:
            for source, unit in zip(sources, units, strict=False):
                report.start(source.name)
                if source.dataset is not None:  # shard by shard, in bounded memory
                    result = mine_dataset(source.dataset, source.name, cfg, k, report.step)
                else:
                    corpus = source.load()
                    check_packable(corpus.k, packed)
                    result = mine_corpus(corpus, cfg, report.step)
                result.summary["output_dir"] = str(source.out_dir)
                try:
                    write_outputs(result, unit.staging, cfg)
                except (OSError, OutputPathError) as exc:  # a full disk, a file-size limit
                    if is_disk_full(exc):  # one line naming the space left
                        raise write_error(source.out_dir, exc) from None
                    why = (
                        exc.reason
                        if isinstance(exc, OutputPathError)
                        else exc.strerror or str(exc).split("] ")[-1]
                    )
                    raise CorpusError(
                        f"{source.out_dir}: cannot write the results ({why})"
                    ) from None
                if not experiment:
                    plot_rank_frequency(
                        {source.name: result.curves}, unit.staging / "rank_frequency.png"
                    )
                unit.commit()
                summaries.append(result.summary)
                curves[source.name] = result.curves
                report.done()
        if experiment:
            staging = units[-1].staging
            atomic_write_text(staging / "grammar_comparison.md", comparison_markdown(summaries))
            plot_rank_frequency(curves, staging / "figures" / "rank_frequency.png")
            units[-1].commit()
    finally:
        for unit in units:
            unit.abort()  # a committed unit has nothing left to remove
    if progress:
        print_comparison(summaries)
    return summaries


class _progress:
    """A rich progress bar over runs and mining steps; silent when disabled."""

    def __init__(self, enabled: bool, n_runs: int) -> None:
        self.enabled, self.n_runs = enabled, n_runs
        self.bar: RichProgress | None = None

    def __enter__(self) -> _progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            # on stderr and transient: stdout keeps only the results table, and an error
            # message is not preceded by a half-drawn bar
            self.bar = Progress(
                TextColumn("[bold]{task.fields[run]}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} runs"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("", total=self.n_runs, run="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start(self, name: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, run=name, description="loading")

    def step(self, message: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=message)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)
