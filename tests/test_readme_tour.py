"""The README read literally: every tour line parses (program, command, options, values)
as written, its quickstart paths exist in a quickstart-shaped folder, and
`python -m strop.evaluation.readme_figures` prints the README's figures from such a folder."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer

from strop.runs import RunFolder, write_json

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_lines() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## A tour\n.*?```bash\n(.*?)```", text, flags=re.S)
    assert block, "README has no tour block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [argv for argv in lines if argv]


def apps() -> dict[str, typer.Typer]:
    from grammar.cli import app as grammar_app
    from llm_decode.cli import app as llm_app
    from strop.cli import app as strop_app

    return {"strop": strop_app, "strop-grammar": grammar_app, "strop-llm": llm_app}


def parse(argv: list[str]) -> dict:
    """Parse `argv` as the console script would, down to the leaf command; its params."""
    program = Path(argv[0])
    assert program.parent == Path(".venv/bin"), f"{argv[0]}: not the venv's, as in the main command"
    command = typer.main.get_command(apps()[program.name])
    name, args, parent = program.name, list(argv[1:]), None
    while hasattr(command, "list_commands"):  # a group: the next word names the command
        parent = command.make_context(name, [], parent=parent, resilient_parsing=True)
        name, args = args[0], args[1:]
        command = command.get_command(parent, name)
        assert command is not None, f"{' '.join(argv)}: no command {name}"
    # A wrong option or value raises click's usage error here, as the script would exit 2.
    ctx = command.make_context(name, args, parent=parent)
    return ctx.params


def quickstart_shaped(root: Path) -> None:
    """The folders the tour reads: runs/quickstart/data (CLEVR layout)."""
    data = root / "runs/quickstart/data"
    for split in ("train", "val", "test"):
        (data / "images" / split).mkdir(parents=True)
        write_json(data / "scenes" / f"CLEVR_{split}_scenes.json", {"info": {}, "scenes": []})


@pytest.mark.parametrize("argv", tour_lines(), ids=lambda a: " ".join(a[:3]))
def test_every_tour_line_parses_and_reads_what_the_quickstart_wrote(argv, tmp_path, monkeypatch):
    quickstart_shaped(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = parse(argv)
    for value in params.values():
        if isinstance(value, Path) and value.parts[:2] == ("runs", "quickstart"):
            assert value.exists(), f"{' '.join(argv)}: {value} is not what the quickstart writes"
    # decoding and mining read the tour's own experiment, not the old runs/clevr default
    if "runs" in params:
        assert params["runs"] == Path("runs/tour")


def test_the_tour_reads_the_quickstart_and_writes_its_own_folder():
    lines = [" ".join(a) for a in tour_lines()]
    assert any("--data runs/quickstart/data" in line for line in lines)
    assert not any("runs/clevr" in line for line in lines)


def test_readme_figures_come_from_one_command(tmp_path, capsys):
    from strop.evaluation.readme_figures import main

    exp = tmp_path / "quickstart" / "clevr"
    for name, k, cos, ci, length in (
        ("k32", 32, 0.78, [0.77, 0.79], 7.8),
        ("k64", 64, 0.782, [0.775, 0.789], 7.8),
        ("k64-fixed", 64, 0.791, [0.785, 0.797], 16.0),
    ):
        run = RunFolder(exp / name)
        run.path.mkdir(parents=True)
        run.write_config({"model": {"k": k}})
        by_objects = {"3": 4.2, "10": 9.5}
        run.write_eval(
            {
                "split": "val",
                "n_images": 200,
                "cos": cos,
                "length_mean": length,
                "ci95": {"cos": ci},
                "length_vs_objects": {"pearson": 0.75, "mean_length_by_objects": by_objects},
            }
        )
        if not name.endswith("fixed"):
            for backend, err in (("knn", 1.33), ("naive", 2.0)):
                write_json(
                    run.llm_dir / backend / "summary.json",
                    {"n": 15, "count_err": err, "protocol": {"shots": 50}},
                )
    assert main([str(tmp_path / "quickstart")]) == 0
    out = capsys.readouterr().out
    assert "Pearson 0.75 / 0.75 for K = 32 / 64" in out
    assert "from 4.2 tokens (3 objects) to 9.5 (10 objects) at K = 32" in out
    assert "At K = 64 the fixed-length baseline (16 tokens) reached cos 0.791 [0.785, 0.797]" in out
    assert "curriculum's 0.782 [0.775, 0.789] at 7.8 tokens (within noise" in out
    assert "knn count error 1.33 / 1.33 vs naive 2.00 / 2.00" in out
    assert main([str(tmp_path / "nothing")]) == 1
    assert json.loads((exp / "k32" / "eval.json").read_text())["n_images"] == 200
