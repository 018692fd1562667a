"""The Table 16 calibration of the naive baseline's and the scores' definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_decode.calibration import PAPER_NAIVE, calibrate, markdown_table
from llm_decode.schema import DecodedScene
from strop.data.placement import sample_scene
from strop.scenes import load_scenes

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "clevr-real" / "annotations"


def _synthetic(n: int, seed: int) -> list[DecodedScene]:
    return [
        DecodedScene.from_scene(sample_scene(np.random.default_rng([seed, i]), i, "train"))
        for i in range(n)
    ]


def _real(name: str) -> list[DecodedScene]:
    return [DecodedScene.from_scene(s) for s in load_scenes(ANNOTATIONS / name)[1]]


def test_calibration_covers_every_definition_and_sorts_by_distance():
    results = calibrate(_synthetic(55, 0), _synthetic(16, 1), draws=3)
    assert len(results) == 3 * 4 * 3  # naive definitions x matchings x position errors
    distances = [r.distance for r in results]
    assert distances == sorted(distances)
    table = markdown_table(results)
    assert "| paper (Table 16) |" in table and f"**{PAPER_NAIVE['attr_acc']:.3f}**" in table
    assert table.count("\n") == len(results) + 2
    with pytest.raises(ValueError, match="50 pool and 15 test"):
        calibrate(_synthetic(10, 0), _synthetic(16, 1), draws=1)


@pytest.mark.real_clevr
def test_on_real_annotations_the_default_is_the_closest():
    """The defaults (`ScoringOptions()`, `DEFAULT_NAIVE`) are the calibration's winner on the
    real train/val annotations, and much closer than the definitions the code had before."""
    from llm_decode.backends.baselines import DEFAULT_NAIVE
    from llm_decode.scoring import ScoringOptions

    if not ANNOTATIONS.is_dir():
        pytest.skip(f"{ANNOTATIONS} not present (the shared real-CLEVR sample is optional)")
    pool = _real("CLEVR_train_scenes_1000.json")
    test = _real("CLEVR_val_scenes_500.json")
    results = calibrate(pool, test, draws=20)
    best = results[0]
    assert (best.naive, best.options) == (DEFAULT_NAIVE, ScoringOptions())
    old = next(
        r
        for r in results
        if (r.naive, r.options.matching, r.options.position_error)
        == ("modal", "position", "coordinate")
    )
    assert best.distance < 2.5 < 10 < old.distance
