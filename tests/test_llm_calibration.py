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
    # naive definitions x placements x matchings x position errors x attribute accuracies
    assert len(results) == 3 * 2 * 4 * 3 * 3
    distances = [r.distance for r in results]
    assert distances == sorted(distances)
    table = markdown_table(results)
    assert "| paper (Table 16) |" in table and f"**{PAPER_NAIVE['attr_acc']:.3f}**" in table
    assert table.count("\n") == len(results) + 2
    own = [r.own_spread_distance for r in results]
    assert own != sorted(own)  # the joint distance ranks differently from the old one
    with pytest.raises(ValueError, match="50 pool and 15 test"):
        calibrate(_synthetic(10, 0), _synthetic(16, 1), draws=1)


@pytest.mark.real_clevr
@pytest.mark.needs_shared
def test_on_real_annotations_the_default_is_the_closest():
    """The defaults (`ScoringOptions()`, `DEFAULT_NAIVE`, k-means placement) are among the
    nearest readings on the real train/val annotations (the nearest at 200 draws, see
    docs/TABLE16_CALIBRATION.md), and much closer than the definitions the code had before;
    no reading reproduces the paper's row."""
    from llm_decode.backends.baselines import DEFAULT_NAIVE
    from llm_decode.scoring import ScoringOptions

    if not ANNOTATIONS.is_dir():
        pytest.skip(f"{ANNOTATIONS} not present (the shared real-CLEVR sample is optional)")
    pool = _real("CLEVR_train_scenes_1000.json")
    test = _real("CLEVR_val_scenes_500.json")
    results = calibrate(pool, test, draws=20)
    ours = next(
        r
        for r in results
        if (r.naive, r.positions, r.options) == (DEFAULT_NAIVE, "kmeans", ScoringOptions())
    )
    assert results.index(ours) < 4 and ours.distance < 1.15 * results[0].distance
    old = next(
        r
        for r in results
        if (r.naive, r.positions, r.options.matching, r.options.position_error)
        == ("modal", "kmeans", "position", "coordinate")
        and r.options.attr_accuracy == "matched"
    )
    assert results[0].distance > 3 and 2.5 * ours.distance < old.distance
