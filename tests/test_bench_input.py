"""The input-pipeline bench rows run on real CLEVR PNGs (those in tests/fixtures) and a
real feature cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_input

FIXTURE_PNGS = sorted(
    (Path(__file__).parent / "fixtures" / "clevr_real" / "CLEVR_v1.0" / "images").glob("*/*.png")
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_decode_rows_measure_real_480x320_pngs():
    assert len(FIXTURE_PNGS) >= 2
    rate, cores = bench_input.decode_rows(FIXTURE_PNGS[:4])
    assert "480x320 -> 224px" in rate["name"] and rate["unit"] == "img/s"
    assert rate["value"] > 0 and rate["baseline"] > 0
    assert cores["value"] == -(-bench_input.DECODE_TARGET // rate["value"])  # ceil


def test_cache_rows_read_a_real_feature_cache():
    rate, bandwidth, cores = bench_input.cache_rows(64)
    assert rate["value"] > 0 and cores["value"] >= 1
    # 196 x 384 fp16 per image: the bandwidth is the image rate times 147 KiB.
    assert bandwidth["value"] == pytest.approx(rate["value"] * 196 * 384 * 2 / 2**20, rel=1e-6)


def test_missing_real_clevr_is_a_skipped_row(tmp_path):
    assert bench_input.real_clevr_pngs(tmp_path) == []
