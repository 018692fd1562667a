"""`strop-grammar`: mine program corpora for n-gram and pair-reuse structure against nulls.

Errors in the input (empty corpus, codes outside [0, K), mixed K, a run without programs) are
printed as one line on stderr and exit with status 1 (the work failed); a bad option value
exits 2 (usage), as in every STROP tool (`strop.cli_app`). No traceback reaches the user.
"""

from __future__ import annotations

from pathlib import Path

import typer

from grammar import __version__
from strop.cli_app import Commands, exit_on, make_app

commands = Commands()


@commands.command("mine")
def mine(
    path: Path = typer.Argument(
        ...,
        help="An experiment folder, a run folder, a programs.parquet, a programs dataset "
        "folder (strop export's shards), or a text file (one program per line).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN/grammar/)."),
    max_n: int = typer.Option(4, "--max-n", min=1, max=8, help="Longest n-gram counted."),
    seed: int = typer.Option(0, "--seed", help="Seed of null corpora, held-out split, samples."),
    null_replicates: int = typer.Option(
        3, "--null-replicates", min=0, help="Replicates per null model."
    ),
    k: int | None = typer.Option(
        None, "--k", min=1, help="Codebook size (default: recorded, else max code + 1)."
    ),
    min_count: int = typer.Option(
        5, "--min-count", min=1, help="Frequency floor for scored pairs."
    ),
    markov_null: bool = typer.Option(
        False, "--markov-null", help="Also run the bigram-preserving Markov null."
    ),
    repair_max_tokens: int = typer.Option(
        300_000, "--repair-max-tokens", min=1, help="Codes given to Re-Pair."
    ),
    ngram_min_count: int = typer.Option(
        2, "--ngram-min-count", min=1, help="Floor for rows of ngrams.tsv (1: every n-gram)."
    ),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Programs dataset: processes counting shards (0: this one)."
    ),
    sample_programs: int = typer.Option(
        200_000,
        "--sample-programs",
        min=1,
        help="Programs dataset: sample for nulls, Re-Pair and significance (counts are exact).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or table."),
) -> None:
    """Mine PATH; write summary.json, ngrams.tsv, pairs.tsv, rules.txt, grammar.pcfg per run."""
    from pydantic import ValidationError

    from grammar.corpus import CorpusError
    from grammar.mine import mine_path
    from grammar.ngrams import MaxNError
    from strop.atomic import OutputPathError
    from strop.runs import RunFolderError

    failed = (CorpusError, RunFolderError, OutputPathError)  # OutputPathError: a full disk
    with exit_on(usage=(ValidationError, MaxNError), failed=failed):
        summaries = mine_path(
            path,
            out=out,
            max_n=max_n,
            seed=seed,
            null_replicates=null_replicates,
            k=k,
            progress=not quiet,
            min_count=min_count,
            markov_null=markov_null,
            repair_max_tokens=repair_max_tokens,
            ngram_min_count=ngram_min_count,
            workers=workers,
            sample_programs=sample_programs,
        )
    for s in summaries:
        typer.echo(
            f"{s['run']}: {s['n_programs']} programs, {s['n_tokens']} codes -> {s['output_dir']}"
        )


app = make_app(
    "strop-grammar",
    __version__,
    "Mine STROP program corpora: n-grams, pair reuse, null models, Re-Pair grammars.",
    commands,
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
