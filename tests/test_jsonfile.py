"""One JSON reader (`strop.jsonfile`) and one validation line (`strop.errors`), used by every reader of a
JSON file: each fault is one line naming the file, in the reader's own error type."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from strop.cli_app import one_line
from strop.errors import validation_line
from strop.jsonfile import JsonFileError, read_json_object, read_json_value
from strop.model.feature_cache import FeatureCacheError, read_index
from strop.runs import RunFolderError, read_json
from strop.scenes import SceneFileError, load_scenes
from strop.training.config import ConfigError, load_config_file

FAULTS = [
    (b"{oops", "not valid JSON (Expecting property name enclosed in double quotes at line 1)"),
    (b'{"a": "\xff"}', "not a UTF-8 text file (byte 7)"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply"),
]


@pytest.mark.parametrize(("raw", "says"), FAULTS)
def test_every_reader_says_the_same_line_in_its_own_error(tmp_path: Path, raw: bytes, says):
    """Before one reader, the feature cache's index and a config file let a non-UTF-8 or
    deeply nested file through as a traceback."""
    path = tmp_path / "index.json"
    path.write_bytes(raw)
    readers = [
        (read_json_object, JsonFileError),
        (read_json, RunFolderError),
        (load_scenes, SceneFileError),
        (load_config_file, ConfigError),
        (lambda p: read_index(p.parent), FeatureCacheError),
    ]
    for read, error in readers:
        with pytest.raises(error) as caught:
            read(path)
        assert str(caught.value) == f"{path}: {says}", read


def test_a_folder_in_the_files_place_and_a_non_object(tmp_path: Path):
    with pytest.raises(JsonFileError, match=r"a\.json: file not found"):
        read_json_value(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("[1, 2]")
    assert read_json_value(tmp_path / "b.json") == [1, 2]
    with pytest.raises(ConfigError, match=r"b\.json: expected a JSON object, got a list$"):
        load_config_file(tmp_path / "b.json")


class _Inner(BaseModel):
    n: int


class _Outer(BaseModel):
    rows: list[_Inner]


def test_validation_line_names_file_field_and_value():
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate({"rows": [{"n": 1}, {"n": "x" * 100}]})
    exc = caught.value
    line = validation_line(exc, "f.json:", got=True)
    assert line.startswith("f.json: field rows[1].n: Input should be a valid integer")
    assert line.endswith(f"(got {('x' * 100)!r:.60})")
    assert validation_line(exc, prefix="data.").startswith("data.rows[1].n: ")


def test_the_command_line_shows_a_whole_object_by_its_type():
    """`one_line` shares the formatter: a rejected object was printed whole, a line as long
    as the object."""
    with pytest.raises(ValidationError) as caught:
        _Outer.model_validate({"rows": {"n": list(range(1000))}})
    line = one_line(caught.value)
    assert line == "rows: Input should be a valid list (got dict)"
