"""Feature cache: `strop cache-features` on a real synthetic CLEVR folder, read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from typer.testing import CliRunner

from strop.cli import app
from strop.data.datasets import build_dataset
from strop.model.feature_cache import FeatureCacheDataset, FeatureCacheError
from strop.model.teachers import PixelTeacher


def test_cache_features_cli_roundtrip(synth_clevr_ro, tmp_path):
    out = tmp_path / "cache"
    result = CliRunner().invoke(
        app,
        [
            "cache-features",
            "--data",
            str(synth_clevr_ro),
            "--teacher",
            "pixels",
            "--out",
            str(out),
            "--split",
            "train",
            "--split",
            "val",
            "--image-size",
            "32",
            "--patch-size",
            "8",
            "--workers",
            "0",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "teacher pixels" in result.output
    index = json.loads((out / "index.json").read_text())
    assert index["teacher"] == "pixels" and index["image_size"] == 32
    assert set(index["splits"]) == {"train", "val"}

    images = build_dataset(synth_clevr_ro, "train", 32)
    cached = FeatureCacheDataset(out, "train")
    assert len(cached) == len(images)
    teacher = PixelTeacher(8)
    for i in (0, len(images) - 1):
        item, ref = cached[i], images[i]
        assert item["feats"].dtype == torch.float16 and item["feats"].shape == (16, 192)
        expected = teacher(ref["image"].unsqueeze(0))[0].half()
        assert torch.equal(item["feats"], expected)
        assert (item["image_id"], item["n_objects"], item["scene"]) == (
            ref["image_id"],
            ref["n_objects"],
            ref["scene"],
        )
    with_images = FeatureCacheDataset(out, "train", images=images)
    assert torch.equal(with_images[1]["image"], images[1]["image"])

    cached.check(tiny_model_config(image_size=32))
    with pytest.raises(
        FeatureCacheError, match="cached with teacher='pixels', the model wants 'random-vit'"
    ):
        cached.check(tiny_model_config(teacher="random-vit", image_size=32))


def test_cache_errors_name_the_file(synth_clevr_ro, tmp_path):
    with pytest.raises(FeatureCacheError, match="no feature cache here"):
        FeatureCacheDataset(tmp_path, "train")
    out = tmp_path / "cache"
    from strop.model.feature_cache import write_features

    write_features(
        build_dataset(synth_clevr_ro, "val", 32), PixelTeacher(8), out, "val", 32, progress=False
    )
    with pytest.raises(FeatureCacheError, match=r"no split 'train' \(has val\)"):
        FeatureCacheDataset(out, "train")
    with pytest.raises(FeatureCacheError, match="cache was made with teacher='pixels'"):
        write_features(
            build_dataset(synth_clevr_ro, "val", 32), _Renamed(), out, "test", 32, progress=False
        )
    # a truncated memmap is refused with the expected and found sizes
    data = (out / "val.f16").read_bytes()
    (out / "val.f16").write_bytes(data[:-2])
    with pytest.raises(FeatureCacheError, match=rf"val.f16: expected {len(data)} bytes"):
        FeatureCacheDataset(out, "val")
    assert np.isfinite(np.frombuffer(data, np.float16)).all()


class _Renamed(PixelTeacher):
    def __init__(self) -> None:
        super().__init__(8)
        self.teacher_name = "random-vit"
