"""The frame of a scenes file's `pixel_coords`, read from the file's `info` by the JSON decoder
(`strop.evaluation.object_masks.leading_info`), without reading the scenes list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strop.evaluation.object_masks import _info_frame, leading_info
from strop.scenes import SceneFileError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"scenes_{abs(hash(text))}.json"
    path.write_text(text, encoding="utf-8")
    return path


def frame(tmp_path: Path, text: str) -> tuple[int, int] | None:
    return _info_frame(write(tmp_path, text))


@pytest.mark.parametrize("indent", [None, 2])
def test_the_frame_of_our_writers_and_of_real_clevr(tmp_path, indent):
    ours = {"info": {"split": "val", "pixel_frame": [480, 320]}, "scenes": [{"a": 1}]}
    assert frame(tmp_path, json.dumps(ours, indent=indent)) == (480, 320)
    older = {"info": {"image_size": 64}, "scenes": []}
    assert frame(tmp_path, json.dumps(older, indent=indent)) == (64, 64)
    real = {"info": {"version": "1.0", "split": "val"}, "scenes": []}
    assert frame(tmp_path, json.dumps(real, indent=indent)) is None


def test_the_scenes_list_is_never_read(tmp_path):
    """Stops at `scenes`: what follows may be anything (70k scenes, in real files)."""
    path = write(tmp_path, '{"info": {"pixel_frame": [48, 32]}, "scenes": [not json at all')
    assert leading_info(path) == {"pixel_frame": [48, 32]}
    assert leading_info(write(tmp_path, '{"scenes": [], "info": {"image_size": 8}}')) is None


def test_an_info_longer_than_a_read_chunk_is_read_whole(tmp_path):
    """The regex it replaces read the first 4096 characters only and missed this frame."""
    info = {"license": "x" * 200_000, "pixel_frame": [480, 320]}
    assert frame(tmp_path, json.dumps({"info": info, "scenes": []})) == (480, 320)
    # a number cut by a chunk's end is read on, not taken at its first digits
    for pad in range(65_500, 65_560, 7):
        text = '{"info": {"pad": "' + "p" * pad + '", "image_size": 123456}, "scenes": []}'
        assert frame(tmp_path, text) == (123456, 123456)


def test_a_scenes_key_inside_info_is_not_the_scenes_list(tmp_path):
    """The regex split the head at the first `"scenes"`, wherever it stood."""
    text = '{"info": {"counts": {"scenes": 3}, "pixel_frame": [40, 30]}, "scenes": []}'
    assert frame(tmp_path, text) == (40, 30)


def test_members_before_info_are_skipped(tmp_path):
    text = json.dumps({"version": [1, {"x": None}], "info": {"pixel_frame": [9, 7]}})
    assert frame(tmp_path, text) == (9, 7)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "not a valid JSON object"),
        ('{"info": {"pixel_frame": [48, 32}, "scenes": []}', "not valid JSON"),
        ('{"info" {"pixel_frame": [48, 32]}}', "not a valid JSON object"),
        ('{"info": {"pixel_frame": [48, 32]', "not valid JSON"),
        ('{"info": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"info": {"pixel_frame": "48x32"}}', r"info\.pixel_frame"),
    ],
)
def test_a_broken_head_is_one_line_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SceneFileError, match=message) as caught:
        _info_frame(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
