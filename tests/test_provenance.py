"""Every derived file names the weights it came from (`strop.provenance`): programs, eval,
sweep, analysis, decode and QA summaries; results of weights the run no longer holds are
flagged, the model card never prints them, and a write whose weights were replaced meanwhile
is refused. A real tiny run is trained to step 6, every result made, then trained on to 8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK_RUN_SETS, tiny_run_config
from typer.testing import CliRunner

from strop.cli import app
from strop.data.renderer import generate_dataset
from strop.output_unit import OutputUnit
from strop.provenance import (
    WeightsChangedError,
    current_weights_sha256,
    file_sha256,
    stale_reason,
    write_json_of_weights,
)
from strop.runs import read_json, read_programs

pytestmark = pytest.mark.usefixtures("one_thread")


def strop(*args: str):
    done = CliRunner().invoke(app, list(args))
    assert done.exit_code == 0, done.output
    return done


def llm(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llm_decode.cli", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=os.environ)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def trained_on(tmp_path_factory) -> dict:
    """Results of step 6, then the run trained on to step 8 (`results` keep step 6's)."""
    from strop.training.trainer import train

    data = tmp_path_factory.mktemp("data") / "clevr"
    generate_dataset(data, n=40, size=32, seed=5, splits=(0.5, 0.5, 0.0), progress=False)
    run = tmp_path_factory.mktemp("exp") / "k16"
    train(tiny_run_config(data, "train.steps=6", *QUICK_RUN_SETS), run, progress=False)
    first = file_sha256(run / "checkpoints" / "last.pt")
    strop("export", str(run), "--split", "train,val")
    strop("eval", str(run), "--no-lpips", "--order-probe", "0")
    strop("eval", str(run), "--sweep", "--sweep-lengths", "2,4", "--no-lpips")
    strop("analyze", str(run), "--n-images", "4")
    for backend in ("knn",):
        llm("decode", "--backend", backend, "--k", "16", "--runs", str(run.parent),
            "--shots", "10", "--test", "5")  # fmt: skip
    early = {
        "programs": read_programs(run / "programs.parquet").meta["weights"],
        "eval": read_json(run / "eval.json")["weights"],
        "sweep": read_json(run / "sweep.json")["weights"],
        "analysis": read_json(run / "analysis" / "analysis.json")["weights"],
        "decode": read_json(run / "llm" / "knn" / "summary.json"),
    }
    train(tiny_run_config(data, "train.steps=8", *QUICK_RUN_SETS), run, progress=False)
    return {"run": run, "first": first, "early": early}


def test_every_derived_file_names_the_step_and_hash_of_its_weights(trained_on):
    early, first = trained_on["early"], trained_on["first"]
    for name in ("programs", "eval", "sweep", "analysis"):
        assert early[name] == {"step": 6, "checkpoint_sha256": first}, name
    decode = early["decode"]
    assert decode["weights"] == {"step": 6, "checkpoint_sha256": first}
    assert decode["stale"] is None  # made while the run held those weights


def test_results_of_weights_the_run_no_longer_holds_are_stale(trained_on):
    run, early = trained_on["run"], trained_on["early"]
    assert current_weights_sha256(run) != trained_on["first"]
    for name in ("programs", "eval", "sweep", "analysis"):
        reason = stale_reason(early[name], run, name)
        assert reason is not None and "step 6" in reason and "rerun" in reason, name
    assert "records no weights" in stale_reason({"step": 3}, run, "eval.json")
    # a data-only folder has nothing to be stale against
    assert stale_reason(None, run.parent, "x") is None


def test_decoding_stale_programs_says_so_in_the_summary_and_on_the_terminal(trained_on):
    run = trained_on["run"]
    done = llm("decode", "--backend", "naive", "--k", "16", "--runs", str(run.parent),
               "--shots", "10", "--test", "5")  # fmt: skip
    summary = read_json(run / "llm" / "naive" / "summary.json")
    assert summary["weights"]["step"] == 6 and "describes other weights" in summary["stale"]
    assert "stale:" in done.stderr + done.stdout


def test_the_model_card_never_shows_an_eval_of_other_weights(trained_on, tmp_path):
    run = trained_on["run"]
    strop("export-model", str(run), "--out", str(tmp_path / "tok"))
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    card = (tmp_path / "tok" / "README.md").read_text()
    eval_cos = read_json(run / "eval.json")["cos"]
    assert f"{eval_cos:.4f}" not in card  # step 6's cos beside step 8's weights: left out
    assert config.get("eval") in (None, {})
    assert config["provenance"]["checkpoint_sha256"] == current_weights_sha256(run)


def test_a_write_whose_weights_were_replaced_meanwhile_is_refused(trained_on, tmp_path):
    run = trained_on["run"]
    target = tmp_path / "eval.json"
    with pytest.raises(
        WeightsChangedError, match=r"its weights were replaced while strop eval ran"
    ):
        write_json_of_weights(target, {"cos": 1.0}, run, trained_on["first"], "strop eval")
    assert not target.exists()
    write_json_of_weights(target, {"cos": 1.0}, run, current_weights_sha256(run), "strop eval")
    assert read_json(target) == {"cos": 1.0}


def test_a_unit_commit_refused_under_the_lock_keeps_the_old_files(tmp_path):
    folder = tmp_path / "out"
    with OutputUnit(folder, "u", ("a.txt",), "cmd") as staging:
        (staging / "a.txt").write_text("old")
    unit = OutputUnit(folder, "u", ("a.txt",), "cmd")
    (unit.open() / "a.txt").write_text("new")

    def refuse() -> None:
        raise WeightsChangedError("refused")

    with pytest.raises(WeightsChangedError):
        unit.commit(refuse)
    unit.abort()
    assert (folder / "a.txt").read_text() == "old"
    assert not list(folder.glob(".u.*"))


def test_the_report_marks_results_of_other_weights_stale(trained_on, tmp_path):
    from strop.evaluation.report import build_report

    run = trained_on["run"]
    md, html = build_report(run.parent, tmp_path / "report")
    text = md.read_text()
    for name in ("eval.json", "sweep.json", "programs.parquet", "analysis/analysis.json"):
        assert f"stale: {run.name} (K=16): {name} describes other weights (step 6" in text, name
    assert "stale:" in html.read_text()


def test_eval_of_an_older_checkpoint_records_that_step_and_the_report_marks_it(
    trained_on, tmp_path
):
    import shutil

    from strop.model.weights import list_steps

    run = tmp_path / "exp" / "k16"
    shutil.copytree(trained_on["run"], run)
    older = [step for step, _ in list_steps(run) if step < 8]
    assert older, "the fixture keeps an older step file"
    data = _data(trained_on["run"])
    strop("eval", str(run), "--no-lpips", "--order-probe", "0", "--checkpoint", str(older[-1]),
          "--data", str(data))  # fmt: skip
    assert read_json(run / "eval.json")["weights"]["step"] == older[-1]
    assert "eval.json describes other weights" in stale_reason(
        read_json(run / "eval.json")["weights"], run, "eval.json"
    )


def test_a_run_without_last_pt_is_compared_with_its_newest_step_file(trained_on, tmp_path):
    import shutil

    from strop.model.weights import list_steps

    run = tmp_path / "k16"
    shutil.copytree(trained_on["run"], run)
    (run / "checkpoints" / "last.pt").unlink()
    newest = list_steps(run)[-1][1]
    assert current_weights_sha256(run) == file_sha256(newest)
    assert stale_reason(trained_on["early"]["eval"], run, "eval.json") is not None


def test_an_image_folder_without_splits_gets_no_in_sample_baselines(trained_on, tmp_path):
    import shutil

    run = trained_on["run"]
    data = _data(run)
    flat = tmp_path / "imgs"
    flat.mkdir()
    for png in sorted((data / "images" / "val").glob("*.png"))[:12]:
        shutil.copy(png, flat / png.name)
    from strop.evaluation.evaluate import evaluate_run

    result = evaluate_run(run, data=flat, write=False, progress=False, lpips=False,
                          order_probe_images=0)  # fmt: skip
    assert "in-sample" in result["baselines_note"]
    assert result["alignment"]["mean_field"] is None and result["scene_probes"] is None


def _data(run: Path) -> Path:
    """The run's dataset folder (config.json stores it relative to the run)."""
    data = Path(read_json(run / "config.json")["data"]["path"])
    return data if data.is_absolute() else (run / data).resolve()
