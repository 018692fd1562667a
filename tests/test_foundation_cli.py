"""The three console scripts exist, answer --help/--version, and the light packages stay torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

import strop


@pytest.mark.parametrize("script", ["strop", "strop-grammar", "strop-llm"])
def test_console_script_help_and_version(script: str, console_script) -> None:
    helped = subprocess.run(
        [console_script(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0, helped.stderr
    assert "Usage" in helped.stdout
    version = subprocess.run(
        [console_script(script), "--version"], capture_output=True, text=True, timeout=120
    )
    assert version.returncode == 0, version.stderr
    assert strop.__version__ in version.stdout


@pytest.mark.parametrize(
    "modules",
    [
        "grammar, grammar.cli",
        "llm_decode, llm_decode.cli",
        "strop, strop.scenes, strop.runs",
    ],
)
def test_light_packages_do_not_import_torch(modules: str) -> None:
    code = f"import sys; import {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_strop_help_lists_every_public_command(console_script) -> None:
    out = subprocess.run(
        [console_script("strop"), "--help"], capture_output=True, text=True, timeout=120
    )
    for command in (
        "data",
        "model-info",
        "cache-features",
        "train",
        "export",
        "eval",
        "analyze",
        "report",
        "quickstart",
    ):
        assert command in out.stdout, f"`strop {command}` missing from --help"


def test_prompt_templates_ship_as_package_data() -> None:
    from importlib.resources import files

    templates = [p.name for p in files("prompts").iterdir() if p.name.endswith(".j2")]
    assert templates, "no .j2 templates found in the prompts package"
