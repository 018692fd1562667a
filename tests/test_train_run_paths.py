"""A run folder works from any directory and moves with its data: config.json stores data
folders relative to the run folder, and every reader resolves them against it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_run_config

from strop.training.config import load_run_config, stored_config

pytestmark = pytest.mark.usefixtures("one_thread")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_a_run_trained_with_relative_paths_evaluates_from_elsewhere_and_after_a_move(
    clevr: Path, tmp_path: Path, console_script
) -> None:
    strop = console_script("strop")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(clevr, work / "data")
    trained = run(
        [strop, "train", "--data", "data", "--out", "runs/clevr/k16", "--preset", "tiny",
         "--teacher", "pixels", "--k", "16", "--steps", "2", "--batch-size", "4",
         "--set", "train.val_every=0", "--no-progress"],
        cwd=work,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    config = json.loads((work / "runs/clevr/k16/config.json").read_text())
    assert config["data"]["path"] == "../../../data"

    # Moved with its data, and evaluated from another directory.
    moved = tmp_path / "moved"
    shutil.move(work, moved)
    done = run([strop, "eval", "clevr/k16", "--limit", "2"], cwd=moved / "runs")
    assert done.returncode == 0, done.stderr
    assert json.loads((moved / "runs/clevr/k16/eval.json").read_text())["n_images"] == 2


def test_stored_paths_are_relative_to_the_run_and_old_cwd_relative_ones_still_read(
    clevr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "runs" / "k16"
    run_dir.mkdir(parents=True)
    cfg = tiny_run_config(clevr)
    stored = stored_config(cfg, run_dir)
    assert (run_dir / stored["data"]["path"]).resolve() == clevr.resolve()
    (run_dir / "config.json").write_text(json.dumps(stored))
    monkeypatch.chdir(tmp_path / "runs")
    assert Path(load_run_config("k16").data.path).resolve() == clevr.resolve()

    # A config.json written before: data.path relative to the directory training ran from.
    shutil.copytree(clevr, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    stored["data"]["path"] = "data"
    (run_dir / "config.json").write_text(json.dumps(stored))
    assert load_run_config(run_dir).data.path == "data"
    # A hub id or a missing folder is kept for the reader's own error message.
    stored["data"]["path"] = "hf://owner/clevr"
    (run_dir / "config.json").write_text(json.dumps(stored))
    assert load_run_config(run_dir).data.path == "hf://owner/clevr"
