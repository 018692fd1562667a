"""The `strop-llm qa` command: decode's options (one definition, shared) plus QA's own.

Design decisions
- The command's options are `QAConfig`'s flagged fields (decode's, inherited, less the ones
  that only mean something for scene decoding, plus `--oracle` and `--questions`), derived
  by `strop.cli_options` as decode's are; its body goes through the same
  `config_from_options` and `run_with_progress` as decode, so an option, an error or the
  progress bar behaves the same in both and exists once.
- `llm_decode.cli` registers it with `make_qa_command(<that module>, ...)`: the module is
  passed in rather than imported, so `python -m llm_decode.cli` (where it runs as
  `__main__`) does not import itself a second time through this file.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from llm_decode.qa.runner import QAConfig, check_qa_config, plan_qa, run_qa
from strop import cli_options

#: decode options that have no meaning for questions (scene JSON schema, scene scoring,
#: the naive scene, the code-permutation control)
DECODE_ONLY = ("structured", "permute_codes", "matching", "position_error", "naive")


def make_qa_command(cli: ModuleType, *command_options: type[BaseModel]) -> Callable[..., None]:
    """The `qa` command over the decode command module `cli`'s helpers: `QAConfig`'s options
    less `DECODE_ONLY`, then `command_options` (decode's options that set no config field)."""

    def qa(options: dict[str, Any]) -> None:
        """Answer CLEVR-style questions about --test held-out images from their codes; accuracy per family."""
        show_prompt = options.pop("show_prompt", False)
        cfg, secrets = cli.config_from_options(QAConfig, options)
        try:
            check_qa_config(cfg)
        except ValueError as exc:
            cli.fail(str(exc), secrets, usage=True)
        if show_prompt:
            cli.print_first_prompt(plan_qa, cfg, secrets)
            return
        result = cli.run_with_progress(run_qa, cfg, secrets)
        s = result.summary
        families = "  ".join(
            f"{f} {cli.fmt(v['accuracy'])} (n={v['n']})" for f, v in s["families"].items()
        )
        cli.console.print(
            f"{result.folder}: n={s['n']} parse fails={s['parse_fails']} missing={s['missing']} "
            f"accuracy {cli.fmt(s['overall']['accuracy'])}  {families}",
            highlight=False,
            soft_wrap=True,
        )
        cli.fail_if_missing(s, result.folder, secrets)

    return cli_options.command(qa, QAConfig, *command_options, exclude=DECODE_ONLY)
