"""CLEVR's scene sampling: object placement rules, visibility rejection, relationships.

Design decisions
- Sampling follows CLEVR's `render_images.py`: 3-10 objects; for each, a size first (radius
  0.7 large, 0.35 small), then rejection sampling of (x, y) in [-3, 3]^2 until the centre
  distance minus both radii is at least `MIN_DIST` and the offset along every cardinal
  direction (left/right/front/behind, from the camera) is zero or at least `MARGIN`; after
  `MAX_RETRIES` failures the whole scene restarts. Then shape, color, rotation (degrees) and
  material, uniformly. Cubes shrink by sqrt(2) after placement, as CLEVR does, so `z` (the
  object's half height, its centre) is 0.7/0.35 for spheres and cylinders, 0.495/0.247 for cubes.
- CLEVR also rejects scenes where an object shows fewer than 200 pixels of its render (real
  CLEVR v1.0: 480 x 320). We keep that rule, checked on a cheap 64x64 hit buffer, so a scene never depends on the output size:
  the same seed gives the same scenes at 64 px and at 256 px.
- Relationships are CLEVR's: j is left of i when their offset along the `left` direction
  exceeds 0.2, and likewise for the other directions.
"""

from __future__ import annotations

import math

import numpy as np

from strop.data.camera import CLEVR_FRAME, DIRECTIONS, set_pixel_coords
from strop.data.raycast import Solid, hit_buffer
from strop.scenes import (
    COLORS,
    MATERIALS,
    MAX_OBJECTS,
    MIN_OBJECTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
)

SIZE_RADIUS: dict[str, float] = {"large": 0.7, "small": 0.35}
MIN_DIST = 0.25  # CLEVR --min_dist: centre distance minus both radii
MARGIN = 0.4  # CLEVR --margin: separation along each cardinal direction
MAX_RETRIES = 50  # CLEVR --max_retries: placement tries before restarting the scene
MIN_VISIBLE_FRACTION = 200 / (CLEVR_FRAME[0] * CLEVR_FRAME[1])  # --min_pixels_per_object
VISIBILITY_RES = 64


def compute_relationships(
    coords: np.ndarray, directions: dict[str, tuple[float, float, float]], eps: float = 0.2
) -> dict[str, list[list[int]]]:
    """CLEVR's rule: j is in `rel[i]` when (coords[j] - coords[i]) . direction > eps."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    diff = coords[None, :, :] - coords[:, None, :]  # [i, j] = coords[j] - coords[i]
    out: dict[str, list[list[int]]] = {}
    for name in RELATIONS:
        related = diff @ np.asarray(directions[name]) > eps
        np.fill_diagonal(related, False)
        out[name] = [np.nonzero(row)[0].tolist() for row in related]
    return out


def _placement_ok(x: float, y: float, r: float, placed: list[tuple[float, float, float]]) -> bool:
    """CLEVR's distance and margin tests of a candidate against placed (x, y, r)."""
    (lx, ly), (bx, by) = DIRECTIONS["left"][:2], DIRECTIONS["behind"][:2]
    for px, py, pr in placed:
        dx, dy = x - px, y - py
        if math.sqrt(dx * dx + dy * dy) - r - pr < MIN_DIST:
            return False
        # CLEVR rejects 0 < offset < margin along left, right, front and behind; right = -left
        # and front = -behind, so that is 0 < |offset| < margin on the two ground axes.
        along_left, along_behind = abs(dx * lx + dy * ly), abs(dx * bx + dy * by)
        if 0 < along_left < MARGIN or 0 < along_behind < MARGIN:
            return False
    return True


def _place_objects(rng: np.random.Generator, n: int) -> list[tuple[float, float, str]] | None:
    """Positions and sizes for `n` objects, or None when some object ran out of retries."""
    placed: list[tuple[float, float, float]] = []
    out: list[tuple[float, float, str]] = []
    for _ in range(n):
        size = SIZES[rng.integers(len(SIZES))]
        r = SIZE_RADIUS[size]
        # The candidates come in one draw (a stream, as CLEVR's loop consumes them); plain
        # Python beats NumPy here: fewer than 10 placed objects and an early exit.
        candidates = rng.uniform(-3.0, 3.0, size=(MAX_RETRIES, 2)).tolist()
        found = next((c for c in candidates if _placement_ok(c[0], c[1], r, placed)), None)
        if found is None:
            return None
        placed.append((found[0], found[1], r))
        out.append((found[0], found[1], size))
    return out


def sample_scene(rng: np.random.Generator, index: int, split: str) -> Scene:
    """One CLEVR scene: objects, directions, relationships, and `pixel_coords` in real CLEVR's
    480 x 320 frame (`render_scene` recomputes them for the size it renders)."""
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    while True:
        placement = _place_objects(rng, n)
        if placement is None:
            continue
        objects = []
        for x, y, size in placement:
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = COLORS[rng.integers(len(COLORS))]
            rotation = float(rng.uniform(0.0, 360.0))
            material = MATERIALS[rng.integers(len(MATERIALS))]
            z = SIZE_RADIUS[size] / (math.sqrt(2) if shape == "cube" else 1.0)
            objects.append(
                SceneObject(
                    color=color,
                    shape=shape,
                    material=material,
                    size=size,
                    coords_3d=(x, y, z),
                    rotation=rotation,
                )
            )
        _, ids = hit_buffer([Solid.from_object(o) for o in objects], VISIBILITY_RES)
        counts = np.bincount(ids[ids >= 0].ravel(), minlength=n)
        if counts.min() >= MIN_VISIBLE_FRACTION * VISIBILITY_RES**2:
            break
    scene = Scene(
        image_index=index,
        image_filename=f"CLEVR_{split}_{index:06d}.png",
        split=split,
        objects=objects,
        relationships=compute_relationships(np.array([o.coords_3d for o in objects]), DIRECTIONS),
        directions=DIRECTIONS,
    )
    set_pixel_coords(scene, *CLEVR_FRAME)
    return scene
