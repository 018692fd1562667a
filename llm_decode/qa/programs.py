"""CLEVR's functional programs, executed on a scene: how every QA answer is computed.

A question is a list of nodes in CLEVR v1.0's format (`{"function": "filter_color",
"inputs": [0], "value_inputs": ["red"]}`; the later `type`/`side_inputs` spelling is read
too), evaluated in order, each node on the outputs of its `inputs`. The templates of
`llm_decode.qa.questions` write their questions in this format, so one executor answers the
generated questions, real CLEVR questions (which ship their `program`), and, for the knn
baseline, either kind on another image's scene.

Design decisions
- Values: a set of objects is a sorted list of indices, an object an index; answers are
  strings as CLEVR writes them (`yes`/`no`, decimal counts, attribute values).
- Relations come from the scene's `relationships` (CLEVR's camera-based left/right/front/
  behind) and, when a scene has none (scenes from other sources), are computed by CLEVR's
  rule from `3d_coords` and the default camera's ground directions.
- A program that cannot be evaluated on a scene (`unique` on zero or several objects, an
  unknown function) raises `ProgramError`; the knn baseline then falls back (see `runner`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from strop.scenes import ATTRIBUTES, RELATIONS, Scene


class ProgramError(ValueError):
    """A program that cannot be evaluated on a scene; one line."""


def relationships(scene: Scene) -> dict[str, list[list[int]]]:
    """`rel -> [objects that are rel of object i]`, from the scene or CLEVR's rule."""
    if all(scene.relationships.get(r) for r in RELATIONS) or not scene.objects:
        return scene.relationships
    from strop.data.camera import DIRECTIONS
    from strop.data.placement import compute_relationships

    directions = {**DIRECTIONS, **scene.directions}
    coords = np.array([o.coords_3d for o in scene.objects], dtype=np.float64)
    return compute_relationships(coords, directions)


def _node(node: Any) -> tuple[str, list[int], list[str]]:
    if not isinstance(node, dict):
        raise ProgramError(f"program node is not an object: {node!r:.60}")
    function = node.get("function", node.get("type"))
    if not isinstance(function, str):
        raise ProgramError(f"program node without a function: {node!r:.60}")
    inputs = node.get("inputs") or []
    values = node.get("value_inputs", node.get("side_inputs")) or []
    if not isinstance(inputs, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in inputs
    ):
        # a negative index would read a node counted from the end (Python's out[-1])
        raise ProgramError(
            f"{function}: inputs must be a list of node indices >= 0, got {inputs!r:.60}"
        )
    if not isinstance(values, list):
        raise ProgramError(f"{function}: value_inputs must be a list, got {values!r:.60}")
    return function, inputs, [str(v) for v in values]


def _as_answer(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise ProgramError(f"program ends in a {type(value).__name__}, not an answer")


def check_program(program: Sequence[Any]) -> None:
    """Every node well formed and its inputs earlier nodes (`ProgramError` naming the node),
    as CLEVR's programs are written: checked when a file is read, not when a baseline first
    runs the program on some other scene."""
    for position, node in enumerate(program):
        function, inputs, _ = _node(node)
        if any(i >= position for i in inputs):
            earlier = f"0..{position - 1}" if position else "none before node 0"
            raise ProgramError(
                f"node {position} ({function}): inputs must be earlier nodes ({earlier}), "
                f"got {inputs!r:.60}"
            )


def execute(program: Sequence[dict[str, Any]], scene: Scene) -> str:
    """The answer of `program` on `scene` (raises `ProgramError`)."""
    if not program:
        raise ProgramError("empty program")
    rels: dict[str, list[list[int]]] = {}
    out: list[Any] = []
    for node in program:
        function, inputs, values = _node(node)
        try:
            args = [out[i] for i in inputs]
        except IndexError:
            raise ProgramError(f"{function}: input out of range {inputs}") from None
        try:
            out.append(_apply(function, args, values, scene, rels))
        except (IndexError, KeyError, TypeError):
            # a node whose inputs or values are not what its function takes (a program
            # from a file, run on another scene by the knn baseline): no answer, one line
            raise ProgramError(
                f"{function}: cannot be evaluated on inputs {inputs} and values {values}"
            ) from None
    return _as_answer(out[-1])


def _apply(
    function: str, args: list[Any], values: list[str], scene: Scene, rels: dict[str, Any]
) -> Any:
    """One node's value from its inputs' values (`rels` caches the scene's relationships)."""
    objects = scene.objects
    base, _, attr = function.partition("_")
    if function == "scene":
        return list(range(len(objects)))
    if base == "filter" and attr in ATTRIBUTES:
        return [i for i in args[0] if getattr(objects[i], attr) == values[0]]
    if function == "unique":
        if len(args[0]) != 1:
            raise ProgramError(f"unique: {len(args[0])} objects match")
        return args[0][0]
    if function == "relate":
        if not rels:
            rels.update(relationships(scene))
        return sorted(rels.get(values[0], [[]] * len(objects))[args[0]])
    if function == "count":
        return len(args[0])
    if function == "exist":
        return len(args[0]) > 0
    if base == "query" and attr in ATTRIBUTES:
        return getattr(objects[args[0]], attr)
    if base == "same" and attr in ATTRIBUTES:
        own = getattr(objects[args[0]], attr)
        return [i for i, o in enumerate(objects) if i != args[0] and getattr(o, attr) == own]
    if base == "equal" and attr in ATTRIBUTES:
        return args[0] == args[1]
    if function == "equal_integer":
        return args[0] == args[1]
    if function == "less_than":
        return args[0] < args[1]
    if function == "greater_than":
        return args[0] > args[1]
    if function == "union":
        return sorted(set(args[0]) | set(args[1]))
    if function == "intersect":
        return sorted(set(args[0]) & set(args[1]))
    raise ProgramError(f"unknown program function {function!r}")


#: Question families, as the report lists them.
FAMILIES = (
    "count",
    "exist",
    "query_attribute",
    "compare_count",
    "compare_attribute",
    "spatial",
)


def family(program: Sequence[dict[str, Any]]) -> str:
    """The family of a CLEVR program: `spatial` when it relates objects, else by its last node."""
    functions = [_node(n)[0] for n in program]
    if not functions:
        return "other"
    if "relate" in functions:
        return "spatial"
    last = functions[-1]
    if last == "count":
        return "count"
    if last == "exist":
        return "exist"
    if last.startswith("query_"):
        return "query_attribute"
    if last in ("equal_integer", "less_than", "greater_than"):
        return "compare_count"
    if last.startswith("equal_"):
        return "compare_attribute"
    return "other"
