"""The `strop` command line: the commands each area declares in `strop.commands.<area>`.

Command modules import torch inside the command bodies, so `strop --help` stays fast.
Exit codes and error lines are shared with `strop-grammar` and `strop-llm` (`strop.cli_app`).
"""

from __future__ import annotations

from strop import __version__
from strop.cli_app import make_app
from strop.commands import data, evaluation, model, quickstart, train

#: `strop --help` lists the commands in this order: model -> training -> evaluation ->
#: pipeline, then the `data` group (its subcommands under `strop data --help`).
COMMAND_LISTS = (
    model.commands,
    train.commands,
    evaluation.commands,
    quickstart.commands,
    data.commands,
)

app = make_app(
    "strop",
    __version__,
    "STROP: train variable-length visual programs, export, evaluate, analyse and report.",
    *COMMAND_LISTS,
)

main = app  # the console script's entry point (a typer app is callable)

if __name__ == "__main__":
    main()
