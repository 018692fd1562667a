"""The quickstart pipeline end to end at toy size: every stage writes what the next one reads."""

from __future__ import annotations

import json
import subprocess

import pytest

from strop.quickstart import QuickstartConfig, quickstart
from strop.runs import discover_runs, read_programs


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    qc = QuickstartConfig(out=out, n_images=60, image_size=32, ks=(16, 32), steps=12, batch_size=8,
                          shots=10, test=4, analyze_images=2, fixed_k=16)  # fmt: skip
    return quickstart(qc)


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


def test_rerun_resumes_without_redoing_finished_stages(experiment):
    before = {p: p.stat().st_mtime_ns for p in experiment.glob("k*/checkpoints/last.pt")}
    qc = QuickstartConfig(out=experiment.parent, n_images=60, image_size=32, ks=(16, 32), steps=12,
                          batch_size=8, shots=10, test=4, analyze_images=2, fixed_k=16)  # fmt: skip
    quickstart(qc)
    after = {p: p.stat().st_mtime_ns for p in experiment.glob("k*/checkpoints/last.pt")}
    assert before == after, "a finished training run was trained again"


def test_cli_rejects_bad_codebook_list(console_script):
    done = subprocess.run(
        [console_script("strop"), "quickstart", "--ks", "32,x"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "strop quickstart" in done.stderr
    assert "Traceback" not in done.stderr
