"""`strop-grammar`: mine program corpora for n-gram and pair-reuse structure against nulls.

Errors in the input (empty corpus, codes outside [0, K), mixed K, a run without programs) are
printed as one line on stderr and exit with status 1 (the work failed); a bad option value
exits 2 (usage), as in every STROP tool (`strop.cli_app`). No traceback reaches the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from grammar import __version__
from grammar.config import MineConfig
from strop.cli_app import Commands, exit_on, make_app
from strop.cli_options import Arg, Flag, command

commands = Commands()


class MineCommandOptions(BaseModel):
    """`strop-grammar mine`'s options that set no `MineConfig` field."""

    path: Annotated[Path, Arg()] = Field(
        description="An experiment folder, a run folder, a programs.parquet, a programs dataset "
        "folder (strop export's shards), or a text file (one program per line)."
    )
    out: Annotated[Path | None, Flag()] = Field(
        None, description="Output folder (default: RUN/grammar/)."
    )
    k: Annotated[int | None, Flag(min=1)] = Field(
        None, description="Codebook size (default: recorded, else max code + 1)."
    )
    quiet: Annotated[bool, Flag()] = Field(False, description="No progress bar or table.")


def mine(values: dict[str, Any]) -> None:
    """Mine PATH; write summary.json, ngrams.tsv, pairs.tsv, rules.txt, grammar.pcfg per run."""
    from pydantic import ValidationError

    from grammar.corpus import CorpusError
    from grammar.mine import mine_path
    from grammar.ngrams import MaxNError
    from strop.atomic import OutputPathError
    from strop.runs import RunFolderError

    o = MineCommandOptions.model_validate({n: values[n] for n in MineCommandOptions.model_fields})
    failed = (CorpusError, RunFolderError, OutputPathError)  # OutputPathError: a full disk
    with exit_on(usage=(ValidationError, MaxNError), failed=failed):
        summaries = mine_path(
            o.path,
            out=o.out,
            k=o.k,
            progress=not o.quiet,
            **{name: values[name] for name in MineConfig.model_fields if name in values},
        )
    for s in summaries:
        typer.echo(
            f"{s['run']}: {s['n_programs']} programs, {s['n_tokens']} codes -> {s['output_dir']}"
        )


commands.command("mine")(command(mine, MineConfig, MineCommandOptions))

app = make_app(
    "strop-grammar",
    __version__,
    "Mine STROP program corpora: n-grams, pair reuse, null models, Re-Pair grammars.",
    commands,
)

main = app  # the console script's entry point (a typer app is callable)

if __name__ == "__main__":
    main()
