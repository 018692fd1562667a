"""FG-ARI / mBO of the attribution maps beside the baselines a referee asks for first
(`fixed_grid_2x2`, `fixed_grid_4x4`, `shuffled_maps`), on constructed maps whose answer is
known, and masks that cannot score (empty, merged) said aloud."""

from __future__ import annotations

import json

import numpy as np

from strop.baselines import BEYOND, NOT_BEYOND, find_records
from strop.evaluation.object_metrics import EXACT, ObjectMetrics, fixed_grid


def scattered_masks(n: int, shape=(16, 16), seed: int = 0) -> list[np.ndarray]:
    """Masks of 3 small square objects at random places, one per band of rows (-1 background)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        truth = np.full(shape, -1)
        for i in range(3):
            y, x = 5 * i + rng.integers(0, 3), rng.integers(0, shape[1] - 3)
            truth[y : y + 3, x : x + 3] = i
        out.append(truth)
    return out


def test_fixed_grid_cuts_the_frame_into_equal_blocks():
    grid = fixed_grid((4, 6), 2)
    assert grid.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2
    assert len(np.unique(fixed_grid((32, 48), 4))) == 16


def test_a_map_that_copies_the_masks_beats_every_baseline():
    om = ObjectMetrics(seed=0)
    for truth in scattered_masks(30):
        om.add(truth.reshape(-1) + 1, truth.shape, truth, EXACT, n_objects=3)
    summary = om.summary()
    assert summary["fg_ari"] == 1.0 and summary["n_images"] == 30
    records = dict(find_records(summary))
    assert set(records) == {
        f"baselines.{m}.{b}"
        for m in ("fg_ari", "mbo")
        for b in ("fixed_grid_2x2", "fixed_grid_4x4", "shuffled_maps")
    }
    for path, rec in records.items():
        assert rec["verdict"] == BEYOND, path
        assert rec["value"] == (1.0 if rec["metric"] == "fg_ari" else summary["mbo"])
    assert summary["warnings"] == []


def test_a_map_independent_of_the_image_is_not_beyond_the_fixed_grid():
    om = ObjectMetrics(seed=0)
    for truth in scattered_masks(30, seed=1):
        om.add(fixed_grid((2, 2), 2).reshape(-1), (2, 2), truth, EXACT, n_objects=3)
    base = om.summary()["baselines"]
    for metric in ("fg_ari", "mbo"):
        assert base[metric]["fixed_grid_2x2"]["advantage"] == 0.0
        assert base[metric]["fixed_grid_2x2"]["verdict"] == NOT_BEYOND
        # the same map for every image: pairing it with another image's mask changes nothing
        assert base[metric]["shuffled_maps"]["verdict"] == NOT_BEYOND


def test_empty_masks_are_left_out_and_label_nothing():
    om = ObjectMetrics()
    om.add(np.zeros(4, dtype=int), (2, 2), np.full((4, 4), -1), EXACT, n_objects=2)
    summary = om.summary()
    assert summary["fg_ari"] is None and summary["masks"] is None
    assert summary["skipped"] == {"empty_masks": 1}
    assert "no object pixel" in summary["warnings"][0]


def test_merged_object_masks_are_said_to_score_zero():
    om = ObjectMetrics()
    merged = np.full((4, 4), -1)
    merged[:2] = 0  # three objects in the scene, one label in the mask
    om.add(np.arange(4), (2, 2), merged, EXACT, n_objects=3)
    summary = om.summary()
    assert summary["fg_ari"] == 0.0 and summary["fewer_segments_than_objects"] == 1
    assert "one true segment is 0" in summary["warnings"][0]


def test_analysis_json_carries_the_baselines_and_reuse_of_its_own_mode(run_dir):  # noqa: F811
    from strop.evaluation.analyze import analyze_run
    from strop.evaluation.export import export_programs

    export_programs(run_dir, split="val", batch_size=4, progress=False)
    analyze_run(run_dir, n_images=3, n_random_pairs=2, progress=False, length_mode="prefix:1")
    result = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert "length mode" in result["code_reuse"]["source"]
    assert result["code_reuse"]["source"].startswith("analysed images")
    om = result["object_metrics"]
    assert om["baselines"]["fg_ari"]["fixed_grid_2x2"]["n"] == om["n_images"] == 3
    assert om["baselines"]["mbo"]["shuffled_maps"]["verdict"] is None  # 3 images: no verdict
    analyze_run(run_dir, n_images=3, n_random_pairs=2, progress=False)
    result = json.loads((run_dir / "analysis" / "analysis.json").read_text())
    assert result["code_reuse"]["source"] == "programs.parquet"
