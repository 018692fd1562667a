"""CLEVR scene schema: pydantic models, vocabularies, and the scenes-file reader/writer.

Torch-free on purpose: `grammar` and `llm_decode` import it.

Design decisions
- The models follow the JSON the real CLEVR v1.0 files contain (`relationships`, `split`,
  `3d_coords`, `pixel_coords` with a third depth entry), not CLEVR's README.
- Vocabularies are closed (`Literal`): an unknown color is a data error, not a new color.
- `load_scenes` validates scene by scene so an error names the file, the scene index and the
  field path, in one line (`SceneFileError`), instead of pydantic's multi-line report.
- Numbers are finite: Python's JSON reader accepts `NaN` and `Infinity`, so a NaN coordinate
  would otherwise pass every loader and exporter and surface only in scoring; it is refused
  here, naming the scene index and field.
- Numbers are also bounded (`MAX_COORD_3D`, `MAX_PIXEL`): 1e300 is finite, but no scene
  holds it, and it would overflow a squared error or a mask index far from the file.
- `info.pixel_frame` (the frame `pixel_coords` refer to) is two positive whole numbers
  (`check_pixel_frame`); [0, 0] would divide by zero, a negative frame mirror every mask.
- An unreadable file (permissions, a folder in its place, JSON nested past the reader's
  recursion limit) is a `SceneFileError` too.
- `save_scenes` writes through `strop.atomic`, so a crash leaves no half file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from strop.atomic import atomic_write_text
from strop.errors import validation_line
from strop.jsonfile import read_json_value

COLORS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
MATERIALS: tuple[str, ...] = ("rubber", "metal")
SIZES: tuple[str, ...] = ("small", "large")
#: An object's four attributes, in the order the evaluation and the QA programs list them.
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "material", "size")
RELATIONS: tuple[str, ...] = ("right", "behind", "front", "left")
DIRECTIONS: tuple[str, ...] = ("right", "behind", "above", "below", "left", "front")
MIN_OBJECTS, MAX_OBJECTS = 3, 10
#: CLEVR's half extent of the ground region objects are placed in (x, y in [-3, 3]).
COORD_LIMIT = 3.0
#: Largest |value| accepted in `3d_coords`: far beyond CLEVR's [-3, 3] (so a variant with a
#: wider floor loads), far below what overflows a squared error or a pixel index.
MAX_COORD_3D = 100.0
#: Largest |value| accepted in `pixel_coords` (u, v, depth), and the largest `pixel_frame` side.
MAX_PIXEL = 100_000.0

Color = Literal["gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"]
Shape = Literal["cube", "sphere", "cylinder"]
Material = Literal["rubber", "metal"]
Size = Literal["small", "large"]


class SceneFileError(ValueError):
    """A scenes file that cannot be read; the message is one line naming file, scene and field."""


class SceneObject(BaseModel):
    """One CLEVR object. `3d_coords` is (x, y, z); `pixel_coords` is (u, v, depth)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", allow_inf_nan=False)

    color: Color
    shape: Shape
    material: Material
    size: Size
    coords_3d: tuple[float, float, float] = Field(alias="3d_coords")
    pixel_coords: tuple[float, float, float] | None = None
    rotation: float = 0.0

    @field_validator("coords_3d")
    @classmethod
    def _coords_in_range(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        return _bounded(value, MAX_COORD_3D)

    @field_validator("pixel_coords")
    @classmethod
    def _pixels_in_range(
        cls, value: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        return None if value is None else _bounded(value, MAX_PIXEL)

    @property
    def xy(self) -> tuple[float, float]:
        return (self.coords_3d[0], self.coords_3d[1])


def _bounded(value: tuple[float, ...], limit: float) -> Any:
    """`value` when every entry is within [-limit, limit]: a finite but huge number (1e300)
    is a broken file, and would overflow a squared error or a pixel index downstream."""
    for entry in value:
        if abs(entry) > limit:
            raise ValueError(f"{entry:g} is outside [-{limit:g}, {limit:g}]")
    return value


class Scene(BaseModel):
    """One CLEVR scene as stored in `CLEVR_<split>_scenes.json`."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", allow_inf_nan=False)

    image_index: int = Field(ge=0)
    image_filename: str
    split: str
    objects: list[SceneObject]
    relationships: dict[str, list[list[int]]] = Field(default_factory=dict)
    directions: dict[str, tuple[float, float, float]] = Field(default_factory=dict)
    #: Instance-mask label PNG under `masks/<split>/` (0 background, i = the i-th object),
    #: written by `strop data clevr-synth`; None for datasets without masks (real CLEVR v1.0).
    mask_filename: str | None = None

    @field_validator("relationships")
    @classmethod
    def _relationships_index_objects(cls, value: dict[str, list[list[int]]], info: Any):
        unknown = set(value) - set(RELATIONS)
        if unknown:
            raise ValueError(
                f"unknown relation {sorted(unknown)[0]!r}; expected one of {RELATIONS}"
            )
        return value

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), separators=(",", ":"))


def parse_scene(data: Any, *, source: str = "<scene>", index: int | None = None) -> Scene:
    """Validate one scene dict; errors become a one-line `SceneFileError`."""
    where = f"{source}: scene {index}" if index is not None else source
    if not isinstance(data, dict):
        raise SceneFileError(f"{where}: expected a JSON object, got {type(data).__name__}")
    try:
        return Scene.model_validate(data)
    except ValidationError as exc:
        raise SceneFileError(validation_line(exc, where, got=True)) from None


def load_scenes(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Scene]]:
    """Read a CLEVR scenes file `{"info": ..., "scenes": [...]}`; returns (info, scenes)."""
    path = Path(path)
    raw = read_json_value(path, SceneFileError, missing="scenes file not found")
    if not isinstance(raw, dict) or not isinstance(raw.get("scenes"), list):
        raise SceneFileError(f"{path}: expected an object with a 'scenes' list")
    info = raw.get("info") or {}
    if not isinstance(info, dict):
        raise SceneFileError(f"{path}: field info: expected an object, got {type(info).__name__}")
    if "pixel_frame" in info:
        check_pixel_frame(info["pixel_frame"], f"{path}: field info.pixel_frame")
    scenes = [parse_scene(s, source=str(path), index=i) for i, s in enumerate(raw["scenes"])]
    return info, scenes


def check_pixel_frame(value: Any, where: str) -> tuple[int, int]:
    """`info.pixel_frame` as (width, height): two positive whole numbers up to `MAX_PIXEL`.

    A zero or negative frame would divide by zero or silently mirror every object mask."""
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) and v == int(v) and 0 < v <= MAX_PIXEL for v in value)
    )
    if not ok:
        raise SceneFileError(
            f"{where}: expected [width, height], two whole numbers in [1, {MAX_PIXEL:g}], "
            f"got {json.dumps(value)[:60]}"
        )
    return int(value[0]), int(value[1])


def save_scenes(
    path: str | os.PathLike[str], scenes: list[Scene], info: dict[str, Any] | None = None
) -> None:
    """Write a CLEVR scenes file atomically."""
    payload = {"info": info or {}, "scenes": [s.to_json_dict() for s in scenes]}
    atomic_write_text(path, json.dumps(payload))
