"""knn (decode and QA) beside its `random_shot` control (`llm_decode.controls`): programs that
copy the scene must beat it, programs independent of the scene must not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_decode.controls import random_shots
from llm_decode.protocol import ProtocolConfig
from llm_decode.qa.runner import QAConfig, run_qa
from llm_decode.runner import DecodeConfig, decode
from llm_decode.testing.synthetic import make_run
from strop.baselines import BEYOND, NOT_BEYOND
from strop.runs import Programs, read_programs, write_programs


def copied_run(folder, shuffle_codes: bool = False):
    """50 train programs and 15 val copies of the first 15 (knn finds their scene exactly);
    with `shuffle_codes`, every row's codes belong to another row (codes say nothing)."""
    path = make_run(folder, k=64, n_train=50, n_val=0, seed=5)
    programs = read_programs(path)
    copy = programs.subset(list(range(15)))
    codes = programs.codes + copy.codes
    if shuffle_codes:
        order = np.random.default_rng(1).permutation(len(codes))
        codes = [codes[i] for i in order]
    merged = Programs(
        codes=codes,
        image_id=programs.image_id + [f"copy{i}" for i in range(15)],
        split=programs.split + ["val"] * 15,
        n_objects=np.concatenate([programs.n_objects, copy.n_objects]),
        scene=programs.scene + copy.scene,
        codebook_size=64,
    )
    write_programs(path, merged)
    return folder


def test_random_shots_are_seeded_and_in_range():
    assert random_shots(30, 7, 0) == random_shots(30, 7, 0) != random_shots(30, 7, 1)
    assert all(0 <= i < 7 for i in random_shots(30, 7, 0)) and random_shots(3, 0, 0) == []


def test_decode_knn_on_copied_programs_beats_the_random_shot(tmp_path):
    runs = copied_run(tmp_path / "k64")
    s = decode(DecodeConfig(model="knn", k=64, runs=runs, backend="knn")).summary
    acc, count = (
        s["baselines"]["attr_acc"]["random_shot"],
        s["baselines"]["count_err"]["random_shot"],
    )
    assert acc["value"] == 1.0 and acc["verdict"] == BEYOND and acc["n"] == 15
    assert count["value"] == 0.0 and count["verdict"] == BEYOND
    assert count["advantage"] == count["baseline_value"] > 0  # errors: baseline minus knn
    saved = json.loads((runs / "llm" / "knn" / "summary.json").read_text())
    assert saved["baselines"] == json.loads(json.dumps(s["baselines"]))


def test_decode_knn_on_codes_that_say_nothing_is_not_beyond_the_random_shot(tmp_path):
    runs = copied_run(tmp_path / "k64", shuffle_codes=True)
    s = decode(DecodeConfig(model="knn", k=64, runs=runs, backend="knn")).summary
    for metric in ("attr_acc", "count_err"):
        assert s["baselines"][metric]["random_shot"]["verdict"] == NOT_BEYOND, metric
    naive = decode(DecodeConfig(model="naive", k=64, runs=runs, backend="naive")).summary
    assert "baselines" not in naive  # naive stays as it is


@pytest.mark.parametrize("shuffle, verdict", [(False, BEYOND), (True, NOT_BEYOND)])
def test_qa_knn_beside_the_random_shot(tmp_path, shuffle, verdict):
    runs = copied_run(tmp_path / "k64", shuffle_codes=shuffle)
    cfg = QAConfig(model="knn", k=64, runs=runs, backend="knn", protocol=ProtocolConfig())
    summary = run_qa(cfg).summary
    rec = summary["baselines"]["accuracy"]["random_shot"]
    assert rec["n"] == 15 and "test images" in rec["unit"]
    assert rec["value"] == pytest.approx(summary["overall"]["accuracy"])
    assert rec["verdict"] == verdict
