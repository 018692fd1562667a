"""eval.json's baselines (`alignment`, `collapsed`, `scene_probes`, the order probe's
`bag_of_codes`, quality_control's `constant_length`): on constructed fields whose answer is
known, and on one real tiny trained run through `strop eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run_config
from helpers import BASE_SETS

from strop import metrics
from strop.baselines import BEYOND, COLLAPSED, find_records
from strop.evaluation.evaluate import SKILL_MIN, _alignment
from strop.evaluation.quality_calibration import constant_lengths
from strop.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _fields(program: np.ndarray, teacher: np.ndarray, mean_field: np.ndarray):
    per_image = metrics.PerImageField()
    per_image.update(program, teacher)
    baselines = {"mean_field": metrics.PerImageField(), "one_token": metrics.PerImageField()}
    baselines["mean_field"].update(np.broadcast_to(mean_field, teacher.shape), teacher)
    baselines["one_token"].update(np.broadcast_to(mean_field, teacher.shape), teacher)
    stats = metrics.FieldStats()
    stats.update(program, teacher)
    return stats.as_dict(), per_image, baselines


def test_a_field_that_copies_the_image_has_skill_and_one_that_ignores_it_collapses():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(1, 8, 6)) + 2.0  # what every image has in common
    teacher = shared + rng.normal(0, 0.5, (60, 8, 6))
    mean_field = shared[0]
    copy = teacher + rng.normal(0, 0.05, teacher.shape)
    block = _alignment(*_fields(copy, teacher, mean_field), True)
    assert block["mean_field"]["verdict"] == BEYOND and block["skill"] > 0.5
    assert block["one_token"]["verdict"] == BEYOND and block["r2_baseline"]["mean_field"]
    assert block["collapsed"] is False and block["mean_field_r2"] < block["r2"]
    # a field independent of the image: the average field itself, slightly perturbed
    blind = np.broadcast_to(mean_field, teacher.shape) + rng.normal(0, 0.01, teacher.shape)
    block = _alignment(*_fields(blind, teacher, mean_field), True)
    assert block["skill"] < SKILL_MIN and block["collapsed"] is True
    assert block["mean_field"]["verdict"] != BEYOND


def test_constant_lengths_match_the_mean_and_never_look_at_the_image():
    lengths = np.array([1, 2, 2, 3, 7, 8, 8, 1])
    const = constant_lengths(lengths)
    assert set(const) <= {4, 5} and const.mean() == lengths.mean()
    assert (constant_lengths(np.array([3, 3, 3])) == 3).all()


@pytest.fixture(scope="module")
def collapsed_run(clevr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conditioned tiny run made to collapse: 12 steps (32 train, 4 val images)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("baselines") / "k16"
    sets = ["train.steps=12", *BASE_SETS, "model.quality_head=true"]
    return train(tiny_run_config(clevr, *sets), out, progress=False)


def test_strop_eval_writes_every_baseline_and_the_collapse_banner(collapsed_run: Path):
    from typer.testing import CliRunner

    from strop.cli import app

    result = CliRunner().invoke(app, ["eval", str(collapsed_run), "--no-lpips"])
    assert result.exit_code == 0, result.output
    ev = json.loads((collapsed_run / "eval.json").read_text())
    align = ev["alignment"]
    assert align["cos"] == ev["cos"] and align["r2"] == ev["r2"]  # top level kept
    assert align["mean_field_images"] == 32 and align["mean_field_split"] == "train"
    assert align["mean_field"]["baseline_value"] is not None and align["skill"] is not None
    assert ev["collapsed"] is True and ev["collapse_banner"] == COLLAPSED
    assert ev["scene_probes"]["n_train"] == 32 and ev["scene_probes"]["n_val"] == 4
    assert ev["order_probe"]["bag_of_codes"]["n_train"] == 32
    assert ev["order_probe"]["order_matters"] is None  # 4 images: no verdict
    paths = {p for p, _ in find_records(ev)}
    assert {
        "alignment.mean_field",
        "alignment.one_token",
        "alignment.r2_baseline.mean_field",
        "scene_probes.attribute_counts.length_only",
        "scene_probes.attribute_counts.teacher_pooled",
        "scene_probes.object_count.length_only",
        "scene_probes.presence.length_only",
        "scene_probes.nearest_neighbour.random_shot",
        "order_probe.bag_of_codes",
        "quality_control.rows[0].constant_length.reached",
        "quality_control.rows[0].constant_length.error",
    } <= paths
