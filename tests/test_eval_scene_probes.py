"""Probes of the scene from the codes (`strop.evaluation.scene_probes`) and the one ridge they
fit through (`strop.metrics.fit_ridge_cv`), on constructed cases whose answer is known: a
program that copies the scene beats every baseline, a program independent of the image
beats none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strop import metrics
from strop.baselines import BEYOND, NOT_BEYOND, find_records
from strop.evaluation.scene_probes import (
    TARGETS,
    VOCABULARIES,
    ProbeSplit,
    probe_run,
    scene_counts,
    scene_probes,
)

#: one code per (colour, shape, material, size) combination, then a filler code
N_KINDS = 8 * 3 * 2 * 2
FILLER = N_KINDS
K = N_KINDS + 1
L = 10  # every copying program is padded to L: its length says nothing


def random_scene(rng: np.random.Generator) -> dict:
    objects = [
        {attr: str(values[rng.integers(len(values))]) for attr, values in VOCABULARIES}
        for _ in range(int(rng.integers(3, 11)))
    ]
    return {"objects": objects}


def copy_program(scene: dict) -> np.ndarray:
    """A deterministic encoding of the scene: one code per object, then filler up to L."""
    codes = []
    for obj in scene["objects"]:
        code = 0
        for attr, values in VOCABULARIES:
            code = code * len(values) + values.index(obj[attr])
        codes.append(code)
    return np.array(codes + [FILLER] * (L - len(codes)), dtype=np.int64)


def split_of(scenes: list[dict], programs: list[np.ndarray], rng) -> ProbeSplit:
    return ProbeSplit(
        codes=programs,
        scenes=[json.dumps(s) for s in scenes],
        pooled=[rng.normal(size=(len(scenes), 5))],  # a teacher that saw nothing
    )


def make_splits(program, seed: int = 0, n_train: int = 300, n_val: int = 120):
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(n_train + n_val)]
    programs = [program(s, rng) for s in scenes]
    return (
        split_of(scenes[:n_train], programs[:n_train], rng),
        split_of(scenes[n_train:], programs[n_train:], rng),
    )


def test_scene_counts_follow_the_vocabularies():
    assert len(TARGETS) == 15 and TARGETS[0] == "color=gray" and TARGETS[-1] == "size=large"
    scene = {"objects": [{"color": "red", "shape": "cube", "material": "metal", "size": "small"}]}
    counts = scene_counts(json.dumps(scene))
    assert counts.sum() == 4 and {TARGETS[i] for i in np.flatnonzero(counts)} == {
        "color=red",
        "shape=cube",
        "material=metal",
        "size=small",
    }


def test_a_program_that_copies_the_scene_beats_every_baseline():
    train, val = make_splits(lambda s, rng: copy_program(s))
    block, note = scene_probes(train, val, K)
    assert note is None and block is not None
    assert block["attribute_counts"]["value"] > 0.95 and block["object_count"]["value"] > 0.95
    assert block["presence"]["value"] > 0.95
    records = dict(find_records(block))
    assert set(records) == {
        f"{task}.{name}"
        for task in ("attribute_counts", "object_count", "presence")
        for name in ("length_only", "teacher_pooled")
    } | {"nearest_neighbour.random_shot"}
    for path, rec in records.items():
        assert rec["verdict"] == BEYOND, (path, rec)
    assert records["attribute_counts.teacher_pooled"]["ceiling"] is True


def test_a_program_independent_of_the_image_beats_no_baseline():
    train, val = make_splits(lambda s, rng: rng.integers(0, K, int(rng.integers(2, 12))))
    block, _ = scene_probes(train, val, K)
    assert abs(block["attribute_counts"]["value"]) < 0.1
    for path, rec in find_records(block):
        if "teacher_pooled" not in path:  # the noise "teacher" is no baseline here
            assert rec["verdict"] == NOT_BEYOND, (path, rec)


def test_no_scenes_means_no_probes_and_says_why():
    train, val = make_splits(lambda s, rng: copy_program(s), n_train=20, n_val=5)
    val.scenes = [""] * len(val.scenes)
    assert scene_probes(train, val, K) == (None, "no val image has a scene")
    train.scenes = train.scenes[:3] + [""] * 17
    assert "too few train" in scene_probes(train, val, K)[1]


def test_the_ridge_is_scikit_learns_and_its_penalty_comes_from_the_training_rows():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)) * [1, 2, 3, 4, 5, 0]  # a constant column too
    y = x @ rng.normal(size=(6, 3)) + rng.normal(size=(80, 3))
    ours = metrics.fit_ridge(x, y, 7.0)
    scaled = StandardScaler().fit(x)
    theirs = Ridge(alpha=7.0).fit(scaled.transform(x), y)
    assert np.allclose(ours.predict(x), theirs.predict(scaled.transform(x)), atol=1e-10)
    # a pure-noise target is shrunk hardest, a clean one least
    target = np.stack([x[:, 0], rng.normal(size=80)], axis=1)
    cv = metrics.fit_ridge_cv(x, target)
    assert cv.alpha[0] < cv.alpha[1] == max(metrics.RIDGE_ALPHAS)


def test_auc_columns_is_the_mann_whitney_statistic():
    score = np.array([[0.1, 1.0], [0.4, 1.0], [0.35, 1.0], [0.8, 1.0]])
    label = np.array([[0, 1], [0, 0], [1, 1], [1, 0]])
    auc = metrics.auc_columns(score, label)
    assert auc[0] == pytest.approx(0.75) and auc[1] == pytest.approx(0.5)
    assert np.isnan(metrics.auc_columns(score[:, :1], np.ones((4, 1))))[0]


def test_probe_run_on_a_run_folder(run_dir, clevr):  # noqa: F811
    out = probe_run(run_dir, data=clevr, batch_size=8)
    block = out["scene_probes"]
    assert out["run"] == run_dir.name and "scene_probes_note" not in out
    assert block["n_train"] == 32 and block["n_val"] == 4
    assert block["attribute_counts"]["length_only"]["baseline"] == "length_only"
    assert block["nearest_neighbour"]["random_shot"]["n"] == 4
    assert block["attribute_counts"]["teacher_pooled"]["verdict"] is None  # 4 < MIN_N
    # its own dataset has 6 train scenes: too few to fit, and it says so
    small = probe_run(run_dir, batch_size=8)
    assert small["scene_probes"] is None and "too few train" in small["scene_probes_note"]
