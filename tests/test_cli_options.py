"""Every option of `strop`, `strop-grammar` and `strop-llm` is declared once, on a config field.

`tests/fixtures/cli_options/<app>.json` records every parameter of every command (name, flags,
default, type, required, help, and what click checks: range, callback, metavar) as it was
before the options were derived from the configs (`strop.cli_options`); the live commands must
still be exactly that, and each command must be what its models declare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import TypeAdapter
from typer.testing import CliRunner

from grammar.cli import app as grammar_app
from llm_decode.cli import app as llm_app
from strop.cli import app as strop_app

FIXTURES = Path(__file__).parent / "fixtures" / "cli_options"
APPS = {"strop": strop_app, "strop-grammar": grammar_app, "strop-llm": llm_app}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float)) else str(value)


def commands_of(app: typer.Typer) -> dict[str, Any]:
    """Every leaf command of `app`, by its path (`data inspect`)."""
    found: dict[str, Any] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):  # a group (typer 0.29 has its own click)
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            found[" ".join(path)] = cmd

    walk(typer.main.get_command(app), ())
    return found


def click_params(cmd: Any) -> dict[str, dict[str, Any]]:
    """Every parameter of a click command as click holds it, by name."""
    rows = {}
    for p in cmd.params:
        rows[p.name] = {
            "name": p.name,
            "kind": p.param_type_name,
            "opts": list(p.opts),
            "secondary_opts": list(p.secondary_opts),
            "default": _plain(p.default),
            "type": str(p.type_descriptor.annotation),  # type: ignore[attr-defined]
            "min": getattr(p, "min", None),
            "max": getattr(p, "max", None),
            "required": p.required,
            "is_flag": bool(getattr(p, "is_flag", False)),
            "multiple": p.multiple,
            "metavar": p.metavar,
            "show_default": getattr(p, "show_default", None),
            "callback": getattr(p.callback, "__name__", None),
            "help": getattr(p, "help", None),
        }
    return rows


def snapshot(app: typer.Typer) -> dict[str, list[dict[str, Any]]]:
    return {name: list(click_params(cmd).values()) for name, cmd in commands_of(app).items()}


@pytest.mark.parametrize("app_name", list(APPS))
def test_every_option_keeps_its_name_flags_default_and_help(app_name):
    path = FIXTURES / f"{app_name}.json"
    live = snapshot(APPS[app_name])
    if os.environ.get("STROP_RECORD_CLI_OPTIONS") == "1":  # how the fixtures were made
        path.write_text(json.dumps(live, indent=1) + "\n")
    recorded = json.loads(path.read_text())
    assert sorted(live) == sorted(recorded)
    for name, rows in recorded.items():
        by_name = {row["name"]: row for row in rows}
        assert click_params(commands_of(APPS[app_name])[name]) == by_name, name


def declared_commands(app: typer.Typer, prefix: str = "") -> dict[str, Any]:
    """Every command function of `app` (groups walked), by its path, as registered."""
    found = {f"{prefix}{info.name}": info.callback for info in app.registered_commands}
    for group in app.registered_groups:
        found |= declared_commands(group.typer_instance, f"{prefix}{group.name} ")
    return found


def _all_commands() -> list[tuple[str, str]]:
    return [(a, name) for a, app in APPS.items() for name in commands_of(app)]


@pytest.mark.parametrize("app_name, name", _all_commands())
def test_the_command_is_derived_from_its_config(app_name, name):
    """Each parameter is one flagged field (`strop.cli_options`): its flags, help, default
    and click's checks are the field's; nothing is declared beside the models."""
    declared = declared_commands(APPS[app_name])[name].options
    live = click_params(commands_of(APPS[app_name])[name])
    assert [o.name for o in declared] == list(live)
    for option in declared:
        row = live[option.name]
        assert row["kind"] == ("argument" if option.argument else "option"), option.name
        flags = row["opts"] + [f"/{s}" for s in row["secondary_opts"]]
        if not option.argument:
            assert "".join(flags) == "".join(option.decls), option.name
        assert row["help"] == option.help, option.name
        assert row["required"] == (option.default is ...), option.name
        if option.default is not ...:
            assert row["default"] == _plain(option.default), option.name
        for check, value in option.checks.items():
            assert row[check] == getattr(value, "__name__", value), (option.name, check)
    # --help lists each option once, with its declared help
    result = CliRunner().invoke(APPS[app_name], [*name.split(), "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    listed = [
        word
        for line in result.output.splitlines()
        for word in line.strip("│ *").split()[:1]
        if word.startswith("--")
    ]
    assert sorted(listed) == sorted(
        [*(o.decls[0].split("/")[0] for o in declared if not o.argument), "--help"]
    )


@pytest.mark.parametrize("app_name, name", [(a, n) for a, n in _all_commands() if a != "strop-llm"])
def test_every_default_is_a_value_of_its_type(app_name, name):
    """`strop` and `strop-grammar` bodies validate their values into their models: a default
    its own type refuses (`int` left out as None) would fail every run that leaves the option
    out. (`strop-llm`'s `Flag(default=None)` means "not given" and is dropped before its
    config is built.)"""
    for option in declared_commands(APPS[app_name])[name].options:
        if option.default is not ...:
            TypeAdapter(option.kind).validate_python(option.default)
