"""The `strop` command line. Each area registers its commands from `strop.commands.<area>`.

Command modules import torch inside the command bodies, so `strop --help` stays fast.
"""

from __future__ import annotations

import importlib

from strop import __version__
from strop.cli_app import make_app

app = make_app(
    "strop",
    __version__,
    "STROP: train variable-length visual programs, export, evaluate, analyse and report.",
)

#: Each module defines `register(app)`; order is the order of `strop --help`.
COMMAND_MODULES = (
    "strop.commands.data",
    "strop.commands.model",
    "strop.commands.train",
    "strop.commands.evaluation",
    "strop.commands.quickstart",
)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
