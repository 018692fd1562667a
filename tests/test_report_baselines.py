"""The report's "Headlines beside their baselines": comparison records found in every file of
a run, a verdict per K recomputed from each interval, the collapse banner, and what the
report reads checked and skipped aloud (constructed run folders, and one real tiny run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from strop.baselines import BEYOND, COLLAPSED, NOT_BEYOND, compare_means
from strop.evaluation.report import build_report


def record(advantage: float, name: str, metric: str, n: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.7, 0.05, n)
    return compare_means(base + advantage, base, name=name, metric=metric)


def make_run(root: Path, name: str, k: int, eval_json: dict, **files: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {"k": k}}))
    (run / "eval.json").write_text(json.dumps({"k": k, "split": "val", **eval_json}))
    for rel, data in files.items():
        path = run / rel.replace("__", "/").removesuffix("_json")
        path = path.with_name(path.name + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return run


def qa_summary(accuracy: float, k: int, **extra):
    stats = {"accuracy": accuracy, "ci": [0.0, 1.0], "n": 40, "correct": 16}
    return {"k": k, "n": 40, "families": {"count": stats}, "overall": stats, **extra}


def build(root: Path) -> tuple[str, str]:
    md, html = build_report(root, out_dir=root / "out")
    return md.read_text(), html.read_text()


def test_every_file_s_records_get_a_verdict_per_k_and_a_collapsed_run_a_banner(tmp_path):
    collapsed_rec = record(0.0, "mean_field", "cos")
    make_run(
        tmp_path,
        "k32",
        32,
        {"cos": 0.74, "collapsed": True, "alignment": {"mean_field": collapsed_rec}},
    )
    make_run(
        tmp_path,
        "k128",
        128,
        {"cos": 0.78, "alignment": {"mean_field": record(0.04, "mean_field", "cos")}},
        analysis__analysis_json={
            "object_metrics": {
                "baselines": {
                    "fg_ari": {"fixed_grid_2x2": record(-0.2, "fixed_grid_2x2", "fg_ari")}
                }
            }
        },
        llm__knn__summary_json={
            "n": 15,
            "baselines": {"count_err": {"random_shot": record(0.3, "random_shot", "count_err")}},
        },
        llm__qa__knn__summary_json=qa_summary(
            0.4,
            128,
            baselines={"accuracy": {"random_shot": record(0.0, "random_shot", "accuracy", seed=3)}},
        ),
    )
    md, html = build(tmp_path)
    banner = f"k32 (K=32): {COLLAPSED}"
    assert md.index(f"> **{banner}**") < md.index("## Runs")  # above everything
    assert 'data-banner="collapsed"' in html and banner in html
    assert "k128" not in md.split("## Runs")[0]  # only the collapsed run gets the banner
    table = md.split("## Headlines beside their baselines")[1].split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 5  # header + one row per record, every file
    assert any(
        "analysis/analysis.json" in r and "fixed_grid_2x2" in r and NOT_BEYOND in r for r in rows
    )
    assert any(
        "llm/knn/summary.json" in r and "random_shot" in r and f"| {BEYOND} |" in r for r in rows
    )
    assert any("llm/qa/knn/summary.json" in r and "random_shot" in r for r in rows)
    assert any(
        r.startswith("| 32 | k32 | eval.json | alignment (cos)") and NOT_BEYOND in r for r in rows
    )
    assert (
        "K=32 (k32): 0 of 1 headlines beyond their baseline; not beyond: alignment (cos) vs mean_field."
        in md
    )
    assert "K=128 (k128): 2 of 4 headlines beyond their baseline" in md


def test_a_verdict_is_recomputed_from_the_interval_and_bad_records_are_skipped_aloud(tmp_path):
    lying = record(0.0, "one_token", "cos")
    lying["verdict"] = BEYOND  # its interval includes 0
    broken = record(0.05, "mean_field", "cos")
    broken["interval"] = [0.2, 0.1]
    make_run(tmp_path, "k64", 64, {"alignment": {"one_token": lying, "mean_field": broken}})
    md, _ = build(tmp_path)
    assert (
        "k64/eval.json alignment.one_token: the file says 'beyond baseline', its interval says 'not beyond baseline'"
        in md
    )
    assert "k64/eval.json alignment.mean_field: skipped: field interval: expected [lo, hi]" in md
    rows = [r for r in md.splitlines() if r.startswith("| 64 | k64 |")]
    assert len(rows) == 1 and NOT_BEYOND in rows[0]


def test_a_ceiling_is_shown_with_its_gap_and_not_counted_as_a_baseline_missed(tmp_path):
    ceiling = record(-0.1, "teacher_pooled", "r2")  # the teacher's own features: above the codes
    ceiling["ceiling"] = True
    beaten = record(0.05, "length_only", "r2")
    probes = {"attribute_counts": {"teacher_pooled": ceiling, "length_only": beaten}}
    make_run(tmp_path, "k64", 64, {"scene_probes": probes})
    md, _ = build(tmp_path)
    assert "K=64 (k64): 1 of 1 headlines beyond their baseline" in md
    row = next(r for r in md.splitlines() if "teacher_pooled" in r and r.startswith("| 64"))
    assert "ceiling (what the codes could keep at best" in row and NOT_BEYOND not in row
    assert "the file says" not in md  # its stored 'not beyond' is not a disagreement


def test_a_run_without_records_says_which_commands_write_them(tmp_path):
    make_run(tmp_path, "k16", 16, {"cos": 0.7})
    md, _ = build(tmp_path)
    assert "no baselines recorded: rerun `strop eval RUN`" in md


def test_what_the_report_reads_is_checked_and_what_it_skips_is_said(tmp_path):
    make_run(
        tmp_path,
        "k32",
        32,
        {
            "k": 999,
            "cos": "high",
            "length_mean": -3.0,
            "teacher": "<script>alert(1)</script>",
            "n_images": 20,
        },
        llm__qa__knn__summary_json=qa_summary(7.5, 32),
        llm__qa__naive__summary_json=qa_summary(0.25, 32),
        sweep_json={"k": 999, "rows": [], "operating_points": {}},
    )
    md, html = build(tmp_path)
    assert "k32/eval.json: field cos: expected a number, got 'high' (not shown)" in md
    assert "k32/eval.json: field length_mean: -3.0 is outside [0, inf] (not shown)" in md
    assert "k32/eval.json: field k: 999 but the run's K is 32 (not shown)" in md
    assert "| high |" not in md and "-3.0" not in md.split("## Runs")[1].split("> ")[0]
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "<script>alert" not in html
    qa = md.split("## Questions over codes")[1]
    assert (
        "k32/llm/qa/knn/summary.json: skipped: field overall.accuracy: 7.5 is outside [0, 1]" in qa
    )
    assert "7.50" not in md and "| naive | 32 |" in qa
    assert "k32/sweep.json: field k: 999 but the run's K is 32: skipped" in md


def test_a_real_tiny_run_shows_its_analysis_baselines(run_dir, tmp_path):  # noqa: F811
    from strop.evaluation.analyze import analyze_run

    analyze_run(run_dir, n_images=4, n_random_pairs=2, progress=False)
    md, _ = build_report(run_dir, out_dir=tmp_path)
    text = md.read_text()
    section = text.split("## Headlines beside their baselines")[1].split("\n## ")[0]
    for name in ("fixed_grid_2x2", "fixed_grid_4x4", "shuffled_maps"):
        assert f"| {name} |" in section
    assert "| object_metrics.fg_ari | " in section  # the path names what the record qualifies
    assert "no verdict (too few items for a verdict (n = 4 < 10))" in section


def test_readme_figures_state_each_figure_with_its_baseline_and_verdict(tmp_path, capsys):
    from strop.evaluation.readme_figures import main

    exp = tmp_path / "quickstart" / "clevr"
    lvo = {"pearson": 0.72, "length_only": record(0.0, "length_only", "pearson")}
    make_run(
        exp,
        "k32",
        32,
        {"n_images": 50, "cos": 0.74, "collapsed": True, "length_vs_objects": lvo},
        llm__knn__summary_json={
            "n": 15,
            "count_err": 1.2,
            "baselines": {"count_err": {"random_shot": record(0.3, "random_shot", "count_err")}},
        },
    )
    make_run(exp, "k128", 128, {"n_images": 50, "cos": 0.78})
    assert main([str(tmp_path / "quickstart")]) == 0
    out = capsys.readouterr().out
    assert f"K = 32: {COLLAPSED}; its figures above say little." in out
    assert "K = 32, beside their baselines (1 of 2 beyond): length_vs_objects (pearson)" in out
    assert (
        f"count_err 1.006 vs random_shot 0.706: advantage 0.300 [0.300, 0.300], n = 50, {BEYOND}"
        in out
    )
    assert (
        f"(pearson) 0.706 vs length_only 0.706: advantage 0.000 [0.000, 0.000], n = 50, {NOT_BEYOND}"
        in out
    )
    assert "K = 128: no baseline recorded for any figure above" in out
