"""Bad input fails with one line naming the file, the index and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_error_line
from helpers import strop

from strop.data.datasets import (
    ClevrDataset,
    DataError,
    ImageFolderDataset,
    build_dataset,
    hf_clevr_dataset,
)


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_truncated_png_names_file_and_index_when_loaded(synth_clevr: Path) -> None:
    victim = synth_clevr / "images" / "train" / "CLEVR_train_000003.png"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    ds = ClevrDataset(synth_clevr, "train", 32)  # construction does not decode images
    ds[2]  # neighbours still load
    with pytest.raises(DataError) as err:
        ds[3]
    msg = _one_line(err)
    assert str(victim) in msg and "index 3" in msg and "field image" in msg


def test_scenes_file_with_missing_field(synth_clevr: Path) -> None:
    path = synth_clevr / "scenes" / "CLEVR_val_scenes.json"
    data = json.loads(path.read_text())
    del data["scenes"][1]["objects"][0]["material"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        ClevrDataset(synth_clevr, "val", 32)
    msg = _one_line(err)
    assert str(path) in msg and "scene 1" in msg and "objects[0].material" in msg


def test_scenes_file_with_unknown_color(synth_clevr: Path) -> None:
    path = synth_clevr / "scenes" / "CLEVR_val_scenes.json"
    data = json.loads(path.read_text())
    data["scenes"][0]["objects"][1]["color"] = "magenta"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        build_dataset(synth_clevr, "val", 32)
    msg = _one_line(err)
    assert "scene 0" in msg and "objects[1].color" in msg and "magenta" in msg


def test_scenes_file_whose_images_are_missing(synth_clevr: Path) -> None:
    for i in (5, 2):
        (synth_clevr / "images" / "train" / f"CLEVR_train_{i:06d}.png").unlink()
    with pytest.raises(DataError) as err:
        ClevrDataset(synth_clevr, "train", 32)
    msg = _one_line(err)
    assert "CLEVR_train_scenes.json" in msg and "scene 2" in msg and "image_filename" in msg
    assert "CLEVR_train_000002.png" in msg and "2 of 8 images missing" in msg


def test_empty_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        ImageFolderDataset(empty, 32)
    assert str(empty) in _one_line(err) and "no images" in str(err.value)
    with pytest.raises(DataError, match="no images"):
        build_dataset(empty, "train", 32)
    (tmp_path / "clevr" / "images" / "train").mkdir(parents=True)  # a split without images
    with pytest.raises(DataError) as err:
        ClevrDataset(tmp_path / "clevr", "train", 32)
    assert "images/train" in _one_line(err) and "no images" in str(err.value)
    with pytest.raises(DataError) as err:
        ClevrDataset(tmp_path / "clevr", "val", 32)
    assert "splits found: ['train']" in _one_line(err)
    with pytest.raises(DataError, match="not a CLEVR folder"):
        ClevrDataset(empty, "train", 32)
    with pytest.raises(DataError, match="no such dataset"):
        build_dataset(tmp_path / "missing", "train", 32)


def test_hf_copy_without_images_or_split(tmp_path: Path) -> None:
    import datasets

    no_image = tmp_path / "noimg"
    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(no_image))
    with pytest.raises(DataError) as err:
        hf_clevr_dataset(no_image, "train", 32)
    assert "no image column" in _one_line(err) and "text" in str(err.value)

    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(
        str(splits)
    )
    with pytest.raises(DataError) as err:
        hf_clevr_dataset(splits, "validation", 32)
    assert "no split 'validation'" in _one_line(err) and "['train']" in str(err.value)


def test_hf_bad_scene_and_truncated_image(synth_clevr: Path, tmp_path: Path) -> None:
    import datasets

    good = (synth_clevr / "images" / "val" / "CLEVR_val_000000.png").read_bytes()
    rows = {
        "image": [{"bytes": good, "path": None}, {"bytes": good[:200], "path": None}],
        "scene": ["", '{"objects": ['],
    }
    features = datasets.Features({"image": datasets.Image(), "scene": datasets.Value("string")})
    with pytest.raises(DataError) as err:
        from strop.data.datasets import HFImageDataset

        HFImageDataset(datasets.Dataset.from_dict(rows, features=features), 32, source="mem")
    assert "mem: index 1 field scene: not valid JSON" in _one_line(err)

    rows["scene"] = ["", ""]
    ds = HFImageDataset(datasets.Dataset.from_dict(rows, features=features), 32, source="mem")
    ds[0]
    with pytest.raises(DataError) as err:
        ds[1]
    assert "mem: index 1 field image: cannot decode" in _one_line(err)


def test_cli_inspect_reports_one_error_line(synth_clevr: Path) -> None:
    from typer.testing import CliRunner

    from strop.cli import app

    runner = CliRunner()
    ok = runner.invoke(
        app, ["data", "inspect", str(synth_clevr), "--split", "train", "--check-all"]
    )
    assert ok.exit_code == 0, ok.output
    assert "8 images" in ok.output and "objects per scene" in ok.output
    (synth_clevr / "images" / "train" / "CLEVR_train_000000.png").unlink()
    bad = runner.invoke(app, ["data", "inspect", str(synth_clevr)])
    assert bad.exit_code == 1
    assert "error:" in bad.output and "CLEVR_train_000000.png not found" in bad.output


# --------------------------------------------------------------------------- issue 14


def test_sixteen_bit_palette_and_grey_alpha_images_keep_their_values(tmp_path: Path) -> None:
    """A 16-bit PNG used to load as a 99.7% white image: `convert("RGB")` clips at 255."""
    import numpy as np
    from PIL import Image

    from strop.data.datasets import load_image

    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1024).astype(np.uint16)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(ramp).save(sixteen)
    with Image.open(sixteen) as im:
        assert im.mode.startswith("I")  # PIL reads 16-bit PNGs as an integer mode
    got = load_image(sixteen, 8, where="deep")
    expected = np.round(ramp / 257.0) / 255.0
    assert np.allclose(got[0].numpy(), expected, atol=1e-6)
    assert float(got.mean()) == pytest.approx(float(expected.mean()), abs=1e-3)

    grey = np.full((8, 8), 100, dtype=np.uint8)
    palette = Image.fromarray(grey).convert("P")
    palette.save(tmp_path / "pal.png", transparency=0)
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(grey // 2)])
    la.save(tmp_path / "la.png")
    for name in ("pal.png", "la.png"):
        image = load_image(tmp_path / name, 8, where=name)
        assert np.allclose(image.numpy(), 100 / 255.0, atol=1e-6), name

    floats = tmp_path / "float.tiff"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(floats)
    with pytest.raises(DataError) as err:
        load_image(floats, 8, where=f"{floats}: index 0")
    assert str(floats) in _one_line(err) and "mode 'F'" in str(err.value)


def test_nan_or_infinite_coordinates_are_refused_at_load(synth_clevr: Path) -> None:
    path = synth_clevr / "scenes" / "CLEVR_val_scenes.json"
    text = path.read_text()
    data = json.loads(text)
    data["scenes"][1]["objects"][0]["3d_coords"][0] = float("nan")
    path.write_text(json.dumps(data))  # Python writes the bare token NaN, as numpy users do
    assert "NaN" in path.read_text()
    with pytest.raises(DataError) as err:
        ClevrDataset(synth_clevr, "val", 32)
    msg = _one_line(err)
    assert "scene 1" in msg and "objects[0].3d_coords[0]" in msg and "finite" in msg
    data["scenes"][1]["objects"][0]["3d_coords"][0] = 0.5
    data["scenes"][0]["objects"][0]["pixel_coords"][2] = float("inf")
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"scene 0 field objects\[0\]\.pixel_coords\[2\]"):
        ClevrDataset(synth_clevr, "val", 32)


def test_a_missing_relative_path_is_not_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    """`--data dta/clevr` (a typo) used to make ~29 s of hub calls, then a traceback."""
    import time

    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        build_dataset("dta/clevr", "train", 32)
    assert time.perf_counter() - start < 2
    msg = _one_line(err)
    assert msg.startswith("dta/clevr: no such dataset folder or file") and "hf://" in msg


def test_an_empty_scenes_list_says_so(synth_clevr: Path) -> None:
    path = synth_clevr / "scenes" / "CLEVR_val_scenes.json"
    path.write_text(json.dumps({"info": {}, "scenes": []}))
    with pytest.raises(DataError) as err:
        ClevrDataset(synth_clevr, "val", 32)
    assert _one_line(err) == f"{path}: the 'scenes' list is empty"


_UNPRIVILEGED = """
import os, sys
from strop.data.datasets import ClevrDataset, DataError
if os.geteuid() == 0:  # root reads through chmod 000: drop to nobody
    os.setgid(65534)
    os.setuid(65534)
try:
    ClevrDataset(sys.argv[1], sys.argv[2], 16)
except DataError as exc:
    print("DataError:", exc)
"""


def test_permission_denied_on_scenes_file_or_split_folder(synth_clevr_ro: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="strop-perm-"))
    try:
        base.chmod(0o755)  # reachable by the unprivileged child
        data = Path(shutil.copytree(synth_clevr_ro, base / "clevr"))
        cases = (
            (data / "scenes" / "CLEVR_val_scenes.json", "val"),
            (data / "images" / "train", "train"),
        )
        for locked, split in cases:
            locked.chmod(0)
            done = subprocess.run(
                [sys.executable, "-c", _UNPRIVILEGED, str(data), split],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            locked.chmod(0o755)
            assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
            line = done.stdout.strip()
            assert line.startswith("DataError:") and "\n" not in line, done.stdout
            assert str(locked) in line and "Permission denied" in line
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_inspect_check_all_labels_the_first_item(synth_clevr: Path) -> None:
    from typer.testing import CliRunner

    from strop.cli import app

    result = CliRunner().invoke(
        app, ["data", "inspect", str(synth_clevr), "--split", "train", "--check-all"]
    )
    assert result.exit_code == 0, result.output
    assert "first item: image (3, 128, 128), id CLEVR_train_000000" in result.output


# --------------------------------------------------------------------------- datasets copies


def test_hf_parquet_with_string_n_objects(synth_clevr: Path, tmp_path: Path) -> None:
    import datasets

    from strop.data.datasets import DataError, hf_clevr_dataset

    good = (synth_clevr / "images" / "val" / "CLEVR_val_000000.png").read_bytes()
    features = datasets.Features({"image": datasets.Image(), "n_objects": datasets.Value("string")})
    rows = {"image": [{"bytes": good, "path": None}] * 2, "n_objects": ["four", "five"]}
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    with pytest.raises(DataError) as err:
        hf_clevr_dataset(path, "train", 32)
    assert "index 0 field n_objects" in str(err.value) and "'four'" in str(err.value)
    line = one_error_line(strop("data", "inspect", path, "--image-size", 16), 1)
    assert "index 0 field n_objects" in line
