"""Each option of `strop-llm decode` and `qa` is declared once, on its config field.

`tests/fixtures/cli_options/strop-llm.json` records every option of both commands as they
were before the options were derived from the configs (`strop.cli_options`); the derivation
must reproduce them exactly, and each command must be what its configs declare
(`test_cli_options.py` checks both for every command of the three tools).
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from llm_decode.cli import CommandOptions, app
from llm_decode.qa.cli import DECODE_ONLY
from llm_decode.qa.runner import QAConfig
from strop.cli_options import Flag, FlagGroup, command, nest, options_of


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)


def click_options(name: str) -> dict[str, dict[str, Any]]:
    """Every option of `strop-llm <name>` as the click command holds it."""
    cmd = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {
        p.name: {
            "name": p.name,
            "opts": list(p.opts),
            "secondary_opts": list(p.secondary_opts),
            "default": _plain(p.default),
            "type": str(p.type_descriptor.annotation),
            "required": p.required,
            "is_flag": bool(getattr(p, "is_flag", False)),
            "help": p.help,
        }
        for p in cmd.params
    }


def test_help_lists_each_option_once_with_its_declared_help():
    result = CliRunner().invoke(app, ["qa", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert "prompts/qa.j2" in result.output and "prompts/decode.j2" not in result.output
    listed = [
        word
        for line in result.output.splitlines()
        for word in line.strip("│ *").split()[:1]
        if word.startswith("--")
    ]
    declared = [
        o.decls[0].split("/")[0]
        for m in (QAConfig, CommandOptions)
        for o in options_of(m, DECODE_ONLY)
    ]
    assert sorted(listed) == sorted([*declared, "--help"])
    assert "--permute-codes" not in result.output and "--matching" not in result.output


class _Inner(BaseModel):
    depth: Annotated[int, Flag()] = Field(3, ge=1, description="How deep.")
    hidden: int = 5  # no Flag: not an option


class _Outer(BaseModel):
    name: Annotated[str, Flag("--name", "-n")] = Field(description="Who.")
    inner: Annotated[_Inner, FlagGroup("inner: ", default=None)] = Field(default_factory=_Inner)
    loud: Annotated[bool, Flag("--loud/--quiet", help="Shout.")] = False


def test_options_nest_back_into_the_model_and_validation_stays_with_it():
    got: list[dict[str, Any]] = []
    cli = typer.Typer()
    cli.command("run")(command(got.append, _Outer))
    cli.command("other")(lambda: None)  # two commands: a group, invoked by name
    assert [(o.path, o.default, o.help) for o in options_of(_Outer)] == [
        (("name",), ..., "Who."),
        (("inner", "depth"), None, "inner: How deep."),
        (("loud",), False, "Shout."),
    ]
    result = CliRunner().invoke(cli, ["run", "-n", "x", "--depth", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert got == [{"name": "x", "inner": {"depth": 2}, "loud": False}]
    assert _Outer.model_validate(got[0]).inner.depth == 2
    assert nest(options_of(_Outer), {"name": "y", "depth": None, "loud": True}) == {
        "name": "y",
        "inner": {"depth": None},
        "loud": True,
    }
    missing = CliRunner().invoke(cli, ["run"])
    assert missing.exit_code == 2 and "--name" in missing.output


def test_an_option_declared_twice_is_refused():
    class Twice(BaseModel):
        loud: Annotated[bool, Flag()] = False

    with pytest.raises(ValueError, match="declared twice: \\['loud'\\]"):
        command(lambda options: None, _Outer, Twice)
