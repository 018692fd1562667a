"""`train.num_workers` by default is at most the usable cores: training on a 2-core machine
does not warn about its worker count (torch's DataLoader warns when workers exceed cores)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from conftest import tiny_run_config

from strop.training.config import TrainConfig, default_num_workers, usable_cores
from strop.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

WARNING = "worker processes in total"


def test_default_workers_never_exceed_the_cores():
    assert [default_num_workers(c) for c in (1, 2, 3, 4, 16)] == [1, 2, 3, 4, 4]
    assert TrainConfig().num_workers == min(4, usable_cores())


def _warnings_training_on_two_cores(data: Path, out: Path, *sets: str) -> list[str]:
    """Train 2 steps with this process pinned to two cores (as on a 2-core machine); the
    warnings raised. The config is built while pinned, as `strop train` would build it."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:2])
    try:
        cfg = tiny_run_config(
            data,
            "train.steps=2",
            "model.image_size=32",
            "model.l_max=8",
            "train.val_every=0",
            *sets,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(cfg, out, progress=False)
    finally:
        os.sched_setaffinity(0, before)
    return [str(w.message) for w in caught]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_training_on_two_cores_does_not_warn_about_workers(clevr, tmp_path):
    caught = _warnings_training_on_two_cores(clevr, tmp_path / "default")
    assert not [m for m in caught if WARNING in m]
    config = json.loads((tmp_path / "default" / "config.json").read_text())
    assert config["train"]["num_workers"] == 2
    # The check can fail: four workers on the same two cores make torch warn.
    caught = _warnings_training_on_two_cores(clevr, tmp_path / "four", "train.num_workers=4")
    assert [m for m in caught if WARNING in m]
