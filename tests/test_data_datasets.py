"""Loaders: CLEVR folders (synthetic and real-format), image folders, `datasets` copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from strop.data.datasets import (
    ClevrDataset,
    HFImageDataset,
    ImageFolderDataset,
    build_dataset,
    collate,
    hf_clevr_dataset,
)
from strop.scenes import load_scenes


def _check_item(item: dict, size: int) -> None:
    img = item["image"]
    assert img.dtype == torch.float32 and tuple(img.shape) == (3, size, size)
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert isinstance(item["index"], int) and isinstance(item["image_id"], str)
    assert isinstance(item["n_objects"], int) and isinstance(item["scene"], str)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_synthetic_clevr_items(synth_clevr_ro: Path, size: int) -> None:
    ds = ClevrDataset(synth_clevr_ro, "val", size)
    _, scenes = load_scenes(synth_clevr_ro / "scenes" / "CLEVR_val_scenes.json")
    assert len(ds) == 2 and ds.scenes == scenes
    for i in range(len(ds)):
        item = ds[i]
        _check_item(item, size)
        assert item["index"] == i and item["image_id"] == f"CLEVR_val_{i:06d}"
        assert item["n_objects"] == scenes[i].n_objects
        assert json.loads(item["scene"]) == json.loads(scenes[i].to_json())
    if size == 48:  # native size: the exact pixels of the PNG
        png = np.asarray(Image.open(synth_clevr_ro / "images" / "val" / "CLEVR_val_000001.png"))
        assert torch.equal(ds[1]["image"], torch.from_numpy(png / 255.0).float().permute(2, 0, 1))


def test_resize_is_antialiased(tmp_path: Path) -> None:
    # A one-pixel checkerboard: a point-sampling resize would give pure 0/1 stripes.
    board = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.stack([board] * 3, -1)).save(folder / "board.png")
    img = ImageFolderDataset(folder, 64)[0]["image"]
    assert abs(float(img.mean()) - 0.5) < 0.02
    assert float(img.std()) < 0.05


def _real_clevr_tree(root: Path, scenes_src: Path) -> Path:
    """CLEVR_v1.0/ with real-format val scenes, 320x240 images, and a test split without scenes."""
    base = root / "CLEVR_v1.0"
    (base / "scenes").mkdir(parents=True)
    shutil.copy(scenes_src, base / "scenes" / "CLEVR_val_scenes.json")
    rng = np.random.default_rng(0)
    for split, names in (
        ("val", ["CLEVR_val_000000.png", "CLEVR_val_000001.png"]),
        ("test", [f"CLEVR_test_{i:06d}.png" for i in range(3)]),
    ):
        (base / "images" / split).mkdir(parents=True)
        for name in names:
            pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "images" / split / name)
    return root


def test_real_clevr_layout_with_and_without_scenes(real_clevr_scenes: Path, tmp_path: Path) -> None:
    root = _real_clevr_tree(tmp_path / "dl", real_clevr_scenes)
    val = ClevrDataset(root, "val", 64)  # root holds CLEVR_v1.0/
    assert [val[i]["n_objects"] for i in range(2)] == [3, 4]
    _check_item(val[0], 64)
    test = ClevrDataset(root / "CLEVR_v1.0", "test", 32)
    assert len(test) == 3 and test.scenes == []
    item = test[2]
    _check_item(item, 32)
    assert (item["image_id"], item["n_objects"], item["scene"]) == ("CLEVR_test_000002", -1, "")
    assert isinstance(build_dataset(root, "val", 16), ClevrDataset)


def test_image_folder_is_recursive_and_mixed_formats(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "a" / "x.JPG", format="JPEG")
    Image.new("L", (20, 20), 128).save(root / "a" / "b" / "y.png")  # greyscale becomes RGB
    Image.new("RGB", (10, 10)).save(root / "c.jpeg", format="JPEG")
    (root / "notes.txt").write_text("not an image")
    (root / ".x.png.tmp").write_text("temp")
    ds = ImageFolderDataset(root, 24)
    assert [ds[i]["image_id"] for i in range(len(ds))] == ["a/b/y", "a/x", "c"]
    for i in range(len(ds)):
        _check_item(ds[i], 24)
    assert ds[1]["image"][0].mean() > 0.9 and ds[1]["image"][1].mean() < 0.1  # red
    # ImageNet style: a split sub-folder is picked when it exists.
    (tmp_path / "inet" / "val" / "n01").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "inet" / "val" / "n01" / "z.png")
    picked = build_dataset(tmp_path / "inet", "val", 16)
    assert isinstance(picked, ImageFolderDataset) and picked[0]["image_id"] == "n01/z"


def _hf_rows(synth: Path, split: str) -> dict[str, list]:
    _, scenes = load_scenes(synth / "scenes" / f"CLEVR_{split}_scenes.json")
    return {
        "image": [str(synth / "images" / split / s.image_filename) for s in scenes],
        "image_filename": [s.image_filename for s in scenes],
        "scene": [s.to_json() for s in scenes],
    }


def test_hf_save_to_disk_parquet_and_imagefolder(synth_clevr_ro: Path, tmp_path: Path) -> None:
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_filename": datasets.Value("string"),
            "scene": datasets.Value("string"),
        }
    )
    dd = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict(_hf_rows(synth_clevr_ro, s), features=features)
            for s in ("train", "val")
        }
    )
    dd = dd.cast_column("image", datasets.Image())  # embed bytes on save
    saved = tmp_path / "saved"
    dd.save_to_disk(str(saved))
    ds = hf_clevr_dataset(saved, "val", 32, cache_dir=str(tmp_path / "hf"))
    ref = ClevrDataset(synth_clevr_ro, "val", 32)
    assert isinstance(ds, HFImageDataset) and len(ds) == 2
    for i in range(2):
        got, want = ds[i], ref[i]
        _check_item(got, 32)
        assert torch.allclose(got["image"], want["image"])
        assert (got["image_id"], got["n_objects"], got["scene"]) == (
            want["image_id"],
            want["n_objects"],
            want["scene"],
        )
    assert isinstance(build_dataset(saved, "train", 32), HFImageDataset)

    parquet = tmp_path / "clevr-train.parquet"
    dd["train"].to_parquet(str(parquet))
    from_parquet = hf_clevr_dataset(parquet, "train", 32, cache_dir=str(tmp_path / "hf"))
    assert (
        len(from_parquet) == 8
        and from_parquet.n_objects_list == ClevrDataset(synth_clevr_ro, "train", 32).n_objects_list
    )

    # imagefolder: a plain folder of images loaded through `datasets`' builder inference.
    folder = tmp_path / "imagefolder" / "train"
    shutil.copytree(synth_clevr_ro / "images" / "train", folder)
    from_folder = hf_clevr_dataset(
        tmp_path / "imagefolder", "train", 16, cache_dir=str(tmp_path / "hf")
    )
    assert len(from_folder) == 8
    item = from_folder[0]
    _check_item(item, 16)
    assert item["n_objects"] == -1 and item["scene"] == ""


def test_collate_and_dataloader(synth_clevr_ro: Path) -> None:
    ds = ClevrDataset(synth_clevr_ro, "train", 32)
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False, collate_fn=collate)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["index"].tolist() == [0, 1, 2] and batch["index"].dtype == torch.long
    assert batch["n_objects"].tolist() == ds.n_objects_list[:3]
    assert batch["image_id"] == [f"CLEVR_train_{i:06d}" for i in range(3)]
    assert all(isinstance(s, str) and s for s in batch["scene"])
