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


def test_a_split_rewritten_halfway_is_never_read_as_a_mix(synth_clevr_ro, tmp_path):
    """Rewriting a split replaces its .f16, its scenes and the index: a write cut off between
    them used to leave new features beside the old image ids. A real OS error (an immutable
    file, `chattr +i`, which stops root too) cuts the write at each point."""
    import subprocess

    from strop.atomic import OutputPathError
    from strop.model.feature_cache import write_features

    out = tmp_path / "cache"
    val = build_dataset(synth_clevr_ro, "val", 32)
    write_features(val, PixelTeacher(8), out, "val", 32, progress=False)
    before = FeatureCacheDataset(out, "val")
    old = [(before[i]["image_id"], before[i]["feats"]) for i in range(len(before))]
    train = build_dataset(synth_clevr_ro, "train", 32)
    other = torch.utils.data.Subset(train, range(len(val)))  # same size, other images

    def chattr(flag: str, path) -> bool:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0

    if not chattr("+i", out / "index.json"):
        pytest.skip("chattr +i is not available here")
    try:  # the index cannot be rewritten: the split must stay the old one, whole
        with pytest.raises(OutputPathError, match="index.json: cannot write the output here"):
            write_features(other, PixelTeacher(8), out, "val", 32, progress=False)
    finally:
        chattr("-i", out / "index.json")
    after = FeatureCacheDataset(out, "val")
    for i, (image_id, feats) in enumerate(old):
        assert after[i]["image_id"] == image_id and torch.equal(after[i]["feats"], feats)

    chattr("+i", out / "val.f16")
    try:  # the features cannot be replaced: the split is refused, not read as a mix
        with pytest.raises(OutputPathError, match="val.f16: cannot write the output here"):
            write_features(other, PixelTeacher(8), out, "val", 32, progress=False)
    finally:
        chattr("-i", out / "val.f16")
    with pytest.raises(FeatureCacheError, match=r"no split 'val'"):
        FeatureCacheDataset(out, "val")
    write_features(other, PixelTeacher(8), out, "val", 32, progress=False)
    assert FeatureCacheDataset(out, "val")[0]["image_id"] == train[0]["image_id"]
