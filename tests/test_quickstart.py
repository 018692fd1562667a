"""The quickstart pipeline end to end at toy size: every stage writes what the next one reads."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

import pytest
from rich.console import Console

from strop.quickstart import QuickstartConfig, QuickstartError, quickstart
from strop.quickstart.runs import stage_runs, trained_steps
from strop.runs import discover_runs, read_programs

SIZES = dict(n_images=60, image_size=32, ks=(16, 32), steps=12, batch_size=8, shots=10, test=4,
             analyze_images=2, fixed_k=16)  # fmt: skip


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The whole quickstart, its three runs trained by two worker processes side by side."""
    out = tmp_path_factory.mktemp("quickstart")
    return quickstart(QuickstartConfig(out=out, jobs=2, **SIZES))


def test_every_stage_leaves_its_files(experiment):
    runs = discover_runs(experiment)
    assert [r.name for r in runs] == ["k16", "k16-fixed", "k32"]
    fixed = json.loads(runs[1].eval_path.read_text())
    assert fixed["length_min"] == fixed["length_max"] == fixed["l_max"]  # all tokens, no head
    for run in runs:
        programs = read_programs(run.programs_path)
        assert (
            set(programs.split) == {"train", "val"} and programs.codebook_size == run.codebook_size
        )
        assert (run.checkpoints_dir / "last.pt").is_file()
        ev = json.loads(run.eval_path.read_text())
        assert 0 <= ev["cb_pct"] <= 100 and "length_vs_objects" in ev
        assert set(ev["order_probe"]["drop"]) == {"random", "reverse", "cyclic", "sorted"}
        analysis = json.loads((run.path / "analysis" / "analysis.json").read_text())
        assert analysis["object_metrics"]["masks"].startswith("exact")
        summary = json.loads((run.grammar_dir / "summary.json").read_text())
        assert summary["n_programs"] == len(programs)
        if run.name.endswith("-fixed"):
            continue  # the decoders run on the curriculum runs, one per K
        for backend in ("naive", "knn"):
            assert json.loads((run.llm_dir / backend / "summary.json").read_text())["n"] == 4
            qa = json.loads((run.llm_dir / "qa" / backend / "summary.json").read_text())
            assert qa["complete"] and qa["n"] == sum(f["n"] for f in qa["families"].values()) > 4
    html = (experiment / "report.html").read_text()
    md = (experiment / "report.md").read_text()
    for needle in ("k16", "k32", "naive", "knn", "order probe", "FG-ARI", "Questions over codes"):
        assert needle in md and needle in html
    assert "no fixed-vs-curriculum comparison" not in md  # the baseline run fills the table


def test_runs_side_by_side_are_bit_identical_to_runs_one_after_the_other(experiment):
    # The same runs trained, exported, evaluated and analysed in this process, one after the
    # other, into a sibling folder (the same relative path to the data).
    serial = experiment.parent / "clevr-jobs1"
    qc = QuickstartConfig(out=experiment.parent, jobs=1, **SIZES)
    stage_runs(qc, experiment.parent / "data", serial, Console(file=io.StringIO()))
    for run in discover_runs(experiment):
        # metrics.jsonl is left out: it logs images/s.
        names = ["config.json", "programs.parquet", "eval.json", "analysis/analysis.json"]
        names += [f"checkpoints/{p.name}" for p in run.checkpoints_dir.glob("*.pt")]
        assert len(names) >= 6
        for name in names:
            side_by_side, one_by_one = run.path / name, serial / run.name / name
            assert side_by_side.read_bytes() == one_by_one.read_bytes(), f"{run.name}/{name}"


def test_a_failed_run_is_named_in_one_line_and_the_others_are_kept(experiment, tmp_path):
    clevr = tmp_path / "clevr"
    clevr.mkdir()
    (clevr / "k16").write_text("not a folder")  # the run folder of k16 cannot be made
    qc = QuickstartConfig(out=tmp_path, jobs=2, **{**SIZES, "fixed_k": None})
    screen = io.StringIO()
    with pytest.raises(QuickstartError) as failed:
        stage_runs(qc, experiment.parent / "data", clevr, Console(file=screen, width=300))
    assert "1 of 2 runs failed (k16: " in str(failed.value) and "k32" not in str(failed.value)
    lines = screen.getvalue().splitlines()
    assert any(line.startswith("k16 failed: ") and "k16" in line[12:] for line in lines), lines
    assert any(line.startswith("k32 done: ") for line in lines), lines
    assert json.loads((clevr / "k32" / "eval.json").read_text())["k"] == 32


def test_ctrl_c_stops_every_worker_with_a_checkpoint(console_script, tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.Popen(
        [console_script("strop"), "quickstart", "--out", str(out), "--n-images", "150",
         "--steps", "400", "--ks", "8,16", "--fixed-k", "0", "--jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs = [out / "clevr" / "k8", out / "clevr" / "k16"]
    try:
        deadline = time.monotonic() + 180
        while not all((r / "metrics.jsonl").is_file() for r in runs):  # both are training
            assert proc.poll() is None and time.monotonic() < deadline, "no training started"
            time.sleep(0.5)
        workers = [int((r / ".lock").read_text()) for r in runs]
        assert proc.pid not in workers and len(set(workers)) == 2
        proc.send_signal(signal.SIGINT)  # to the parent alone, as `kill -INT` would
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    for run in runs:
        assert 0 < trained_steps(run) < 400  # the checkpoint written on the way out
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_kill_9_of_the_parent_ends_its_workers_even_with_sigint_ignored(console_script, tmp_path):
    """A quickstart started as a script's background job (SIGINT ignored, inherited) and
    killed with -9 left its workers training, holding their runs' locks against the rerun."""
    out = tmp_path / "qs"
    proc = subprocess.Popen(
        [console_script("strop"), "quickstart", "--out", str(out), "--n-images", "150",
         "--steps", "400", "--ks", "8,16", "--fixed-k", "0", "--jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    runs = [out / "clevr" / "k8", out / "clevr" / "k16"]
    try:
        deadline = time.monotonic() + 180
        while not all((r / "metrics.jsonl").is_file() for r in runs):
            assert proc.poll() is None and time.monotonic() < deadline, "no training started"
            time.sleep(0.5)
        workers = [int((r / ".lock").read_text()) for r in runs]
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in workers if _running(pid)]
    finally:
        proc.kill()
    assert alive == [], f"workers {alive} outlived their parent"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_too_few_scenes_for_the_decoders_are_refused_before_any_training(tmp_path):
    with pytest.raises(ValueError, match=r"--n-images 60 renders 48 train and 6 val scenes"):
        QuickstartConfig(out=tmp_path, n_images=60)
    QuickstartConfig(out=tmp_path, n_images=150)  # 120 train >= 50 shots, 15 val >= 15 test


def test_rerun_resumes_without_redoing_finished_stages(experiment):
    before = {p: p.stat().st_mtime_ns for p in experiment.glob("k*/checkpoints/last.pt")}
    quickstart(QuickstartConfig(out=experiment.parent, **SIZES))
    after = {p: p.stat().st_mtime_ns for p in experiment.glob("k*/checkpoints/last.pt")}
    assert before == after, "a finished training run was trained again"


def test_cli_rejects_bad_codebook_list(console_script):
    done = subprocess.run(
        [console_script("strop"), "quickstart", "--ks", "32,x"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "strop quickstart" in done.stderr
    assert "Traceback" not in done.stderr
