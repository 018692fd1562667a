"""The abbreviated scene the LLM reads and writes, and its conversion to and from CLEVR scenes.

Design decisions
- Attribute values use the paper's abbreviations (Appendix G, Table 17), applied the same way
  to shots, legend, schema and expected answer, so the model never translates between forms.
  Keys stay readable (`color`, `shape`, `size`, `material`, `x`, `y`): they cost a few tokens
  per object but make the schema self-describing for a model that has never seen it.
- Positions are (x, y) rounded to two decimals: CLEVR's `z` is fixed by size and shape and
  `rotation` carries no information (`docs/METHOD.md`, "Scenes"), so neither is asked for.
- Parsing is lenient where leniency does not hide a decoding failure: a `<think>` block, a
  Markdown code fence or prose around the JSON object is stripped, a bare list of objects is
  accepted, and a full attribute name (`"red"`) is read as its abbreviation. An unknown value,
  a missing field or a non-numeric position is a parse failure: the model did not produce a
  scene.
- `scene_json_schema()` is the pydantic schema with `additionalProperties: false` everywhere and
  every field required, the form OpenAI-style strict structured output (and vLLM's guided
  decoding) accepts.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from strop.errors import error_line
from strop.scenes import Scene, SceneObject

COLOR_ABBR: dict[str, str] = {
    "gray": "gr",
    "red": "r",
    "blue": "bl",
    "green": "gn",
    "brown": "br",
    "purple": "pr",
    "cyan": "cy",
    "yellow": "y",
}
SHAPE_ABBR: dict[str, str] = {"cube": "cu", "sphere": "sp", "cylinder": "cy"}
SIZE_ABBR: dict[str, str] = {"small": "S", "large": "L"}
MATERIAL_ABBR: dict[str, str] = {"rubber": "R", "metal": "M"}
ABBREVIATIONS: dict[str, dict[str, str]] = {
    "color": COLOR_ABBR,
    "shape": SHAPE_ABBR,
    "size": SIZE_ABBR,
    "material": MATERIAL_ABBR,
}
#: The attributes scored for accuracy, in the order results report them.
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "material")

# CLEVR places an object's centre at z = its radius (0.7 large, 0.35 small), cubes scaled by
# 1/sqrt(2) so their half-diagonal matches; used only to rebuild full scenes.
_RADIUS = {"large": 0.7, "small": 0.35}

ColorAbbr = Literal["gr", "r", "bl", "gn", "br", "pr", "cy", "y"]
ShapeAbbr = Literal["cu", "sp", "cy"]
SizeAbbr = Literal["S", "L"]
MaterialAbbr = Literal["R", "M"]


class SceneParseError(ValueError):
    """An answer that is not a valid abbreviated scene; the message is one line."""


def _expand(abbr: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in abbr.items()}


class DecodedObject(BaseModel):
    """One object in abbreviated form."""

    model_config = ConfigDict(extra="forbid")

    color: ColorAbbr
    shape: ShapeAbbr
    size: SizeAbbr
    material: MaterialAbbr
    x: float
    y: float

    @field_validator("color", "shape", "size", "material", mode="before")
    @classmethod
    def _accept_full_names(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return ABBREVIATIONS[info.field_name].get(value.strip().lower(), value.strip())
        return value

    @field_validator("x", "y")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("position must be a finite number")
        return value

    @property
    def xy(self) -> tuple[float, float]:
        return (self.x, self.y)

    def attributes(self) -> tuple[str, str, str, str]:
        return (self.color, self.shape, self.size, self.material)


class DecodedScene(BaseModel):
    """A scene in abbreviated form: what shots show and what the model must answer."""

    model_config = ConfigDict(extra="forbid")

    objects: list[DecodedObject] = Field(default_factory=list)

    @classmethod
    def from_scene(cls, scene: Scene) -> DecodedScene:
        return cls(objects=[_abbreviate(o) for o in scene.objects])

    @classmethod
    def from_scene_json(cls, text: str) -> DecodedScene:
        return cls.from_scene(Scene.model_validate_json(text))

    def to_scene(self, image_index: int = 0, image_filename: str = "", split: str = "") -> Scene:
        """A full CLEVR scene (z from size and shape; no pixel coordinates, rotation 0)."""
        return Scene(
            image_index=image_index,
            image_filename=image_filename,
            split=split,
            objects=[_expand_object(o) for o in self.objects],
        )

    def to_prompt_json(self) -> str:
        """Compact JSON as shown in shots (positions to two decimals)."""
        payload = {
            "objects": [
                {**o.model_dump(), "x": round(o.x, 2), "y": round(o.y, 2)} for o in self.objects
            ]
        }
        return json.dumps(payload, separators=(",", ":"))


def _abbreviate(obj: SceneObject) -> DecodedObject:
    # model_validate: the abbreviation tables are plain str -> str; pydantic checks the values
    return DecodedObject.model_validate(
        {
            "color": COLOR_ABBR[obj.color],
            "shape": SHAPE_ABBR[obj.shape],
            "size": SIZE_ABBR[obj.size],
            "material": MATERIAL_ABBR[obj.material],
            "x": float(obj.coords_3d[0]),
            "y": float(obj.coords_3d[1]),
        }
    )


def _expand_object(obj: DecodedObject) -> SceneObject:
    shape = _expand(SHAPE_ABBR)[obj.shape]
    size = _expand(SIZE_ABBR)[obj.size]
    z = _RADIUS[size] / (math.sqrt(2.0) if shape == "cube" else 1.0)
    return SceneObject.model_validate(
        {
            "color": _expand(COLOR_ABBR)[obj.color],
            "shape": shape,
            "size": size,
            "material": _expand(MATERIAL_ABBR)[obj.material],
            "coords_3d": (obj.x, obj.y, z),
        }
    )


def abbreviation_legend() -> str:
    """The inline legend for the prompt, e.g. `color: gray=gr, red=r, ...; shape: ...`."""
    parts = []
    for name, table in ABBREVIATIONS.items():
        parts.append(f"{name}: " + ", ".join(f"{full}={short}" for full, short in table.items()))
    return "; ".join(parts)


def scene_json_schema() -> dict[str, Any]:
    """JSON schema of `DecodedScene` for structured output (strict: closed objects, all required)."""
    schema = DecodedScene.model_json_schema()
    schema["required"] = ["objects"]
    schema["properties"]["objects"].pop("default", None)
    return schema


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """(answer, reasoning): `<think>...</think>` blocks moved out of the answer.

    An unclosed `<think>` (the model ran out of tokens while thinking) leaves no answer.
    """
    reasoning = "\n".join(m.group(0)[7:-8].strip() for m in _THINK.finditer(text))
    answer = _THINK.sub("", text)
    lower = answer.lower()
    if "<think>" in lower:
        cut = lower.index("<think>")
        reasoning = (reasoning + "\n" + answer[cut + 7 :]).strip()
        answer = answer[:cut]
    if "</think>" in lower:  # the opening tag was in the prompt (some chat templates add it)
        cut = lower.rindex("</think>")
        reasoning = (reasoning + "\n" + answer[:cut]).strip()
        answer = answer[cut + 8 :]
    return answer.strip(), reasoning


def _extract_json(text: str) -> Any:
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    last_error = "no JSON object found"
    for candidate in candidates:
        candidate = candidate.strip()
        try:
            return json.loads(candidate)
        except json.JSONDecodeError as exc:
            last_error = f"{exc.msg} at char {exc.pos}"
        for opener, closer in (("{", "}"), ("[", "]")):
            start, end = candidate.find(opener), candidate.rfind(closer)
            if 0 <= start < end:
                try:
                    return json.loads(candidate[start : end + 1])
                except json.JSONDecodeError as exc:
                    last_error = f"{exc.msg} at char {start + exc.pos}"
    raise SceneParseError(f"answer is not JSON ({last_error})")


def parse_answer(text: str) -> DecodedScene:
    """Validate a model's answer text as a `DecodedScene`; `SceneParseError` names the field."""
    answer, _ = split_reasoning(text)
    if not answer:
        raise SceneParseError("empty answer (no text after reasoning)")
    data = _extract_json(answer)
    if isinstance(data, list):
        data = {"objects": data}
    if not isinstance(data, dict):
        raise SceneParseError(f"answer is JSON {type(data).__name__}, expected an object")
    try:
        return DecodedScene.model_validate(data)
    except ValidationError as exc:
        raise SceneParseError(first_error(exc)) from None


def first_error(exc: ValidationError) -> str:
    """`field LOC: MESSAGE (got VALUE)` of the first error, for a one-line error about text a
    model or a server sent: the value shortened to 40 characters, an object or list by kind."""
    return "field " + error_line(exc.errors()[0], got=True, root="<root>")
