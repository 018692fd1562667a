"""Resuming and starting trainings where the folder is not what it seems (issue 18).

- Another K's `last.pt` copied into a run: the resume fell over with a traceback holding a
  whole state_dict, after rewriting `config.json`, instead of resuming from the newest step
  checkpoint that fits.
- Training into an experiment folder (one that holds runs) was accepted, and `report` then
  saw one run instead of three.
(A disk full at the first checkpoint, which claimed a previous one: `test_train_faults`.)
Real trainings of the tiny model on CPU.
"""

from __future__ import annotations

import shutil

from helpers import fault_cli_args as cli_args
from helpers import fault_config as config
from typer.testing import CliRunner

from strop.cli import app
from strop.training import checkpoint as ckpt
from strop.training.trainer import train


def test_another_ks_last_pt_is_skipped_for_the_step_checkpoint_that_fits(clevr, tmp_path, capfd):
    run, other = tmp_path / "k16", tmp_path / "k32"
    train(config(clevr, 16), run, progress=False, stop_at=6)
    train(config(clevr, 16, "model.k=32"), other, progress=False, stop_at=3)
    shutil.copyfile(other / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    stored = (run / "config.json").read_bytes()

    # Nothing fits: one line, exit 1, config.json untouched (here: only step files of K=32).
    lone = tmp_path / "lone"
    shutil.copytree(run, lone)
    for path in (lone / "checkpoints").glob("step-*.pt"):
        shutil.copyfile(other / "checkpoints" / "last.pt", path)
    args = cli_args(clevr, lone, 20, "train.num_workers=1")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line and "size mismatch" not in line, line
    assert "no loadable checkpoint" in line and "weights do not fit this run's model" in line
    assert "k 32 vs 16" in line, line
    assert (lone / "config.json").read_bytes() == stored

    # The newest step file that fits is used, and the skip is said in one line.
    capfd.readouterr()
    train(config(clevr, 20, "train.num_workers=0"), run, progress=False, stop_at=7)
    err = capfd.readouterr().err
    assert f"resuming from {run / 'checkpoints' / 'step-0000006.pt'} (step 6)" in err, err
    assert "skipped last.pt: weights do not fit this run's model" in err and "k 32 vs 16" in err
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 7
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["model"].keys()
    assert (run / "config.json").read_bytes() != stored  # rewritten once the resume worked


def test_training_into_an_experiment_folder_is_refused(clevr, tmp_path):
    experiment = tmp_path / "exp"
    for k in (16, 32):
        train(config(clevr, 2, f"model.k={k}"), experiment / f"k{k}", progress=False)
    before = sorted(p.name for p in experiment.iterdir())
    result = CliRunner().invoke(app, cli_args(clevr, experiment, 2))
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "\n" not in line and f"{experiment}: holds runs (k16, k32)" in line, line
    assert sorted(p.name for p in experiment.iterdir()) == before
