"""The `strop-llm qa` command: decode's options (one definition, shared) plus QA's own.

Design decisions
- The command's signature is built from `decode`'s (`llm_decode.cli.decode_command`), less
  the options that only mean something for scene decoding, plus `--oracle` and
  `--questions`; its body goes through the same `config_from_options` and
  `run_with_progress` as decode, so an option, an error or the progress bar behaves the same
  in both and exists once.
- `llm_decode.cli` registers it with `make_qa_command(<that module>)`: the module is passed
  in rather than imported, so `python -m llm_decode.cli` (where it runs as `__main__`)
  does not import itself a second time through this file.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import typer

from llm_decode.qa.runner import QAConfig, check_qa_config, plan_qa, run_qa

#: decode options that have no meaning for questions (scene JSON schema, scene scoring,
#: the naive scene, the code-permutation control)
DECODE_ONLY = ("structured", "permute_codes", "matching", "position_error", "naive")
QA_OPTIONS = {
    "oracle": (
        bool,
        typer.Option(
            False,
            "--oracle",
            help="Give the LLM the true scene JSON instead of the codes (perception removed).",
        ),
    ),
    "questions": (
        Path | None,
        typer.Option(
            None,
            "--questions",
            help="CLEVR questions file (CLEVR_<split>_questions.json) or dataset folder; "
            "default: the one beside the run's dataset, else questions from templates.",
        ),
    ),
}


def make_qa_command(cli: ModuleType) -> Callable[..., None]:
    """The `qa` command over the decode command module `cli`'s options and helpers."""

    def qa_command(**options: Any) -> None:
        """Answer CLEVR-style questions about --test held-out images from their codes; accuracy per family."""
        qa_fields = {name: options.pop(name) for name in QA_OPTIONS}
        show_prompt = options.pop("show_prompt", False)
        cfg, secrets = cli.config_from_options(QAConfig, options, **qa_fields)
        try:
            check_qa_config(cfg)
        except ValueError as exc:
            cli._fail(str(exc), secrets, usage=True)
        if show_prompt:
            cli.print_first_prompt(plan_qa, cfg, secrets)
            return
        result = cli.run_with_progress(run_qa, cfg, secrets)
        s = result.summary
        families = "  ".join(
            f"{f} {_pct(v['accuracy'])} (n={v['n']})" for f, v in s["families"].items()
        )
        cli.console.print(
            f"{result.folder}: n={s['n']} parse fails={s['parse_fails']} missing={s['missing']} "
            f"accuracy {_pct(s['overall']['accuracy'])}  {families}",
            highlight=False,
            soft_wrap=True,
        )
        cli.fail_if_missing(s, result.folder, secrets)

    signature, annotations = _signature(cli.decode_command)
    qa_command.__signature__ = signature  # type: ignore[attr-defined]
    qa_command.__annotations__ = annotations
    return qa_command


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _for_qa(option: Any) -> Any:
    """An option of decode's with its help pointing at the QA template."""
    if not isinstance(getattr(option, "help", None), str) or "decode.j2" not in option.help:
        return option
    option = copy.copy(option)
    option.help = option.help.replace("prompts/decode.j2", "prompts/qa.j2")
    return option


def _signature(decode_command: Callable[..., None]) -> tuple[inspect.Signature, dict[str, Any]]:
    """decode's parameters (annotations resolved, as typer reads them) less `DECODE_ONLY`,
    plus `QA_OPTIONS`."""
    hints = typing.get_type_hints(decode_command)
    params = [
        p.replace(annotation=hints[p.name], default=_for_qa(p.default))
        for p in inspect.signature(decode_command).parameters.values()
        if p.name not in DECODE_ONLY
    ]
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
        for name, (kind, opt) in QA_OPTIONS.items()
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    annotations = {p.name: p.annotation for p in params}
    return inspect.Signature(params, return_annotation=None), {**annotations, "return": None}
