"""Scene schema: round-trip of a real-format CLEVR scenes file, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_error_line
from helpers import strop

from strop.scenes import COLORS, SceneFileError, load_scenes, save_scenes


def test_real_clevr_file_round_trips(real_clevr_scenes: Path, tmp_path: Path) -> None:
    original = json.loads(real_clevr_scenes.read_text())
    info, scenes = load_scenes(real_clevr_scenes)
    assert info == original["info"]
    assert [s.n_objects for s in scenes] == [3, 4]
    first = scenes[0].objects[0]
    assert (first.color, first.shape, first.material, first.size) == (
        "brown",
        "cylinder",
        "rubber",
        "large",
    )
    assert first.xy == pytest.approx((-1.4937210083007812, -1.9936031103134155))
    assert first.pixel_coords == (119, 131, pytest.approx(10.801968574523926))

    out = tmp_path / "again.json"
    save_scenes(out, scenes, info)
    written = json.loads(out.read_text())
    assert written["info"] == original["info"]
    for got, want in zip(written["scenes"], original["scenes"], strict=True):
        # Every field CLEVR wrote survives with its CLEVR name and value.
        assert set(want) <= set(got)
        for key in ("image_index", "image_filename", "split", "relationships"):
            assert got[key] == want[key]
        assert got["directions"] == want["directions"]
        for o_got, o_want in zip(got["objects"], want["objects"], strict=True):
            assert set(o_want) <= set(o_got)
            assert o_got["3d_coords"] == pytest.approx(o_want["3d_coords"])
            assert o_got["pixel_coords"] == pytest.approx(o_want["pixel_coords"])
            for key in ("color", "shape", "material", "size", "rotation"):
                assert o_got[key] == o_want[key]
    _, again = load_scenes(out)
    assert again == scenes


def _damaged(real_clevr_scenes: Path, edit) -> Path:
    data = json.loads(real_clevr_scenes.read_text())
    edit(data)
    real_clevr_scenes.write_text(json.dumps(data))
    return real_clevr_scenes


def test_missing_field_names_file_scene_and_field(real_clevr_scenes: Path) -> None:
    path = _damaged(real_clevr_scenes, lambda d: d["scenes"][1]["objects"][2].pop("shape"))
    with pytest.raises(SceneFileError) as err:
        load_scenes(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "scene 1" in msg and "objects[2].shape" in msg


def test_unknown_color_names_value(real_clevr_scenes: Path) -> None:
    assert "pink" not in COLORS
    path = _damaged(real_clevr_scenes, lambda d: d["scenes"][0]["objects"][1].update(color="pink"))
    with pytest.raises(SceneFileError) as err:
        load_scenes(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "scene 0" in msg and "objects[1].color" in msg and "'pink'" in msg


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"scenes": [')
    with pytest.raises(SceneFileError, match="not valid JSON"):
        load_scenes(bad)
    with pytest.raises(SceneFileError, match="not found"):
        load_scenes(tmp_path / "nope.json")


# --------------------------------------------------------------------------- hostile scene files


def _edit_scenes(root: Path, split: str, edit) -> Path:
    path = root / "scenes" / f"CLEVR_{split}_scenes.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_scenes_nested_100000_deep_is_one_line(synth_clevr: Path) -> None:
    path = synth_clevr / "scenes" / "CLEVR_train_scenes.json"
    text = path.read_text()
    path.write_text(text[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SceneFileError, match="nested too deeply"):
        load_scenes(path)
    line = one_error_line(strop("data", "inspect", synth_clevr, "--image-size", 16), 1)
    assert str(path) in line and "nested too deeply" in line


@pytest.mark.parametrize("frame", [[0, 0], [-48, -48], [48], "48x48", [48, float("inf")]])
def test_a_pixel_frame_that_is_no_frame_is_refused(synth_clevr: Path, frame) -> None:
    def edit(data):
        data["info"]["pixel_frame"] = frame

    path = _edit_scenes(synth_clevr, "train", edit)
    with pytest.raises(SceneFileError, match=r"info\.pixel_frame"):
        load_scenes(path)
    line = one_error_line(strop("data", "inspect", synth_clevr, "--image-size", 16), 1)
    assert str(path) in line and "info.pixel_frame" in line


def test_the_object_masks_refuse_a_bad_frame_too(synth_clevr: Path) -> None:
    """Analysis reads the frame from the file's head, not through `load_scenes`."""
    from strop.evaluation.object_masks import pixel_frame
    from strop.scenes import parse_scene

    def edit(data):
        data["info"]["pixel_frame"] = [-48, -48]

    path = _edit_scenes(synth_clevr, "val", edit)
    scene = parse_scene(json.loads(path.read_text())["scenes"][0])
    with pytest.raises(SceneFileError, match=r"info\.pixel_frame"):
        pixel_frame(synth_clevr, "val", scene)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("3d_coords", [1e300, 0.0, 0.35]),
        ("3d_coords", [0.0, -5e6, 0.35]),
        ("pixel_coords", [1e12, 3, 9]),
    ],
)
def test_huge_finite_coordinates_are_refused(synth_clevr: Path, field: str, value) -> None:
    def edit(data):
        data["scenes"][1]["objects"][0][field] = value

    path = _edit_scenes(synth_clevr, "train", edit)
    with pytest.raises(SceneFileError) as err:
        load_scenes(path)
    assert "scene 1" in str(err.value) and f"objects[0].{field}" in str(err.value)
