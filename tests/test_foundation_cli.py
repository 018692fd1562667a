"""The three console scripts exist, answer --help/--version, and the light packages stay torch-free."""

from __future__ import annotations

import os
import re
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
        "strop, strop.atomic, strop.scenes, strop.runs",
    ],
)
def test_light_packages_do_not_import_torch(modules: str) -> None:
    code = f"import sys; import {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


#: Every public command (docs/FORMATS.md) with the start of its own help line.
COMMANDS = {
    ("strop",): {
        "model-info": "Parameter counts, FLOPs per image",
        "cache-features": "Run the frozen teacher over dataset splits",
        "export-model": "Write a shareable tokenizer",
        "train": "Train (or resume) a STROP run",
        "export": "Encode a dataset split into programs",
        "eval": "Alignment, codebook usage",
        "sweep": "Length-quality curves: every prefix length N",
        "analyze": "Counterfactual erasure",
        "report": "report.md and a self-contained report.html",
        "quickstart": "Render scenes, train K=32/64/128",
        "data": "Scene data: render CLEVR-like scenes",
    },
    ("strop", "data"): {
        "clevr-synth": "Render CLEVR-like scenes into CLEVR's layout",
        "inspect": "Open a dataset as training would",
    },
    ("strop-grammar",): {"mine": "Mine PATH; write summary.json"},
    ("strop-llm",): {
        "decode": "Decode --test held-out scenes",
        "report": "Tabulate every llm/<model>/summary.json",
        "presets": "Print every model preset",
        "qa": "Answer CLEVR-style questions",
    },
}
#: Wide enough that no help line wraps, so each command's row is one line.
WIDE = {**os.environ, "COLUMNS": "250", "TERMINAL_WIDTH": "250"}


def command_rows(help_text: str) -> dict[str, str]:
    """name -> help summary, from the rows of the `Commands` panel of a rich --help."""
    rows: dict[str, str] = {}
    in_panel = False
    for line in help_text.splitlines():
        if "Commands" in line and line.lstrip().startswith("╭"):
            in_panel = True
        elif in_panel and line.lstrip().startswith("╰"):
            break
        elif in_panel and (m := re.match(r"^│ (\S+)\s{2,}(.+?)\s*│$", line)):
            rows[m.group(1)] = m.group(2)
    return rows


def run_help(console_script, path) -> subprocess.CompletedProcess:
    """`<tool> [group] [command] --help` on a wide terminal; it must succeed."""
    out = subprocess.run(
        [console_script(path[0]), *path[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=WIDE,
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_each_command_is_listed_with_its_own_help_line(path, console_script) -> None:
    out = run_help(console_script, path)
    rows = command_rows(out.stdout)
    assert set(rows) == set(COMMANDS[path]), out.stdout
    for name, summary in COMMANDS[path].items():
        assert rows[name].startswith(summary), f"{' '.join(path)} {name}: {rows[name]!r}"


def test_command_rows_parser_reads_only_the_commands_panel() -> None:
    text = (
        "╭─ Options ─╮\n│ --help   Show this message. │\n╰───╯\n"
        "╭─ Commands ─╮\n│ train   Train a run. │\n│ eval    Score it. │\n╰───╯\n"
    )
    assert command_rows(text) == {"train": "Train a run.", "eval": "Score it."}


HELP_PATHS = [
    [*path, name] for path, names in COMMANDS.items() for name in names if name != "data"
] + [list(path) for path in COMMANDS]


@pytest.mark.parametrize("path", HELP_PATHS, ids=" ".join)
def test_help_shows_no_value_type_beside_flags(path, console_script) -> None:
    """Boolean flags (`--help`, `--version`, `--json`, `--progress/--no-progress`) take no
    value, so their help row must not show one (typer 0.29 prints `<bool>`)."""
    out = run_help(console_script, path)
    assert "--help" in out.stdout
    assert "<bool>" not in out.stdout
    # Nor typer's other placeholders: `{run}` for an argument, `<list[str]>` for a
    # repeatable option; and a progress switch is the same pair everywhere. `{split}` is
    # no placeholder: it is the field of a tar pattern that `--data` documents.
    assert not re.search(r"\{(?!split\})\w+\}|<list\[", out.stdout), out.stdout
    if "--no-progress" in out.stdout:
        assert re.search(r"--progress\s+--no-progress", out.stdout), out.stdout


#: (command line, expected exit code): 2 = the command line is wrong, 1 = the work failed.
EXIT_CASES = [
    (["strop", "train", "--no-such-flag"], 2),
    (["strop", "model-info", "--preset", "XL"], 2),
    (["strop", "export", "{tmp}/run", "--length-mode", "sideways"], 2),
    (["strop", "train", "--data", "{tmp}", "--out", "{tmp}/run", "--set", "train.lr=fast"], 2),
    (["strop", "export", "{tmp}/not-a-run"], 1),
    (["strop", "data", "inspect", "{tmp}/no-such-data"], 1),
    (["strop", "report", "{tmp}/empty"], 1),
    (["strop-grammar", "mine", "{tmp}/corpus.txt", "--max-n", "0"], 2),
    (["strop-grammar", "mine", "{tmp}/empty.txt"], 1),
    (["strop-llm", "decode", "--k", "16", "--backend", "openai"], 2),
    (["strop-llm", "decode", "--k", "16", "--backend", "naive", "--runs", "{tmp}/empty"], 1),
    (["strop-llm", "decode", "--k", "16", "--backend", "naive", "--shots", "-1"], 2),
]


@pytest.mark.parametrize(
    "argv, code", EXIT_CASES, ids=lambda v: " ".join(v[:3]) if isinstance(v, list) else str(v)
)
def test_one_exit_code_scheme_for_all_three_tools(argv, code, tmp_path, console_script) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "corpus.txt").write_text("1 2 3\n2 3 4\n")
    (tmp_path / "empty.txt").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = subprocess.run(
        [console_script(args[0]), *args[1:]], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    if code == 1:
        # Our own failures are one line naming what went wrong.
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr


def test_prompt_templates_ship_as_package_data() -> None:
    from importlib.resources import files

    templates = [p.name for p in files("prompts").iterdir() if p.name.endswith(".j2")]
    assert templates, "no .j2 templates found in the prompts package"
