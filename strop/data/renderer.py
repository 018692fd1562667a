"""CLEVR-like scenes without Blender: CLEVR's sampling rules and a vectorised NumPy ray caster.

The paper studies program structure on CLEVR (Johnson et al. 2016; paper Appendix F). Real
CLEVR needs a download and Blender; this module makes scenes that later stages cannot tell
apart from it: same vocabularies, placement rules, folder layout and scene JSON.

Design decisions
- Sampling follows CLEVR's `render_images.py`: 3-10 objects; for each, a size first (radius
  0.7 large, 0.35 small), then rejection sampling of (x, y) in [-3, 3]^2 until the centre
  distance minus both radii is at least `MIN_DIST` and the offset along every cardinal
  direction (left/right/front/behind, from the camera) is zero or at least `MARGIN`; after
  `MAX_RETRIES` failures the whole scene restarts. Then shape, color, rotation (degrees) and
  material, uniformly. Cubes shrink by sqrt(2) after placement, as CLEVR does, so `z` (the
  object's half height, its centre) is 0.7/0.35 for spheres and cylinders, 0.495/0.247 for cubes.
- CLEVR also rejects scenes where an object shows fewer than 200 of 320x240 pixels. We keep
  that rule, checked on a cheap 64x64 hit buffer, so a scene never depends on the output size:
  the same seed gives the same scenes at 64 px and at 256 px.
- The camera is CLEVR's default Blender camera (position, Euler angles, 35 mm lens on a 32 mm
  sensor) without the per-image jitter, so `directions` are the same in every scene. Its 4:3
  frustum is drawn onto the square image (non-square pixels): an S x S render frames the
  scene as a real 320x240 CLEVR image resized to S x S does, which is how the loaders feed
  real CLEVR. `pixel_coords` are in pixels of the rendered size (real CLEVR's: 320x240).
- Rendering is ray casting, not polygon filling: every pixel's camera ray is intersected
  analytically with each object (sphere, rotated box via slabs, capped cylinder) inside that
  object's projected bounding box, and a z-buffer keeps the nearest hit. Painter's order by
  centre distance is wrong for a small object touching a large one; a per-pixel depth test is
  exact, and casting only inside each object's bounding box keeps it cheap.
- Edges of cubes and cylinders are bevelled through the normal only (`BEVEL`), which gives the
  highlights of CLEVR's SmoothCube/SmoothCylinder without extra geometry.
- Shading: rubber is Lambert plus ambient; metal is a darker, tinted mirror of a two-tone
  environment (grey ground below, bright sky above) plus a sharp Blinn-Phong highlight, which
  gives CLEVR metal its contrast. The ground is grey with a soft radial falloff; soft shadows
  come from a capsule proxy per object (an approximation: a shadow's outline is not exact).
- Antialiasing: objects are ray cast at 2x2 supersampling (`supersample`) and box-filtered;
  the smooth ground and its shadows are shaded once at the output size.
- Determinism: image `i` of split `s` uses `np.random.default_rng([seed, split_id, i])`, so
  an image does not depend on how many came before it, and reruns give identical bytes.
- Files: each PNG is written to a temporary name and renamed; the scenes file goes through
  `strop.scenes.save_scenes` (atomic). PNGs use a low compress level: speed over size. A rerun
  into the same folder removes our own files numbered past the new counts, so the folder is
  byte-identical to a fresh run. `workers > 1` renders chunks in processes; same bytes.
- Speed (one core, 128 px, PNG included): sampling ~1.5 ms (CLEVR's rejection loop restarts
  most 10-object scenes several times), ray casting ~3.5 ms, PNG ~0.8 ms; `bench/bench_render.py`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

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
    save_scenes,
)

# --------------------------------------------------------------------------- CLEVR constants

#: CLEVR's `data/properties.json` colours (sRGB 0-255).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SIZE_RADIUS: dict[str, float] = {"large": 0.7, "small": 0.35}
MIN_DIST = 0.25  # CLEVR --min_dist: centre distance minus both radii
MARGIN = 0.4  # CLEVR --margin: separation along each cardinal direction
MAX_RETRIES = 50  # CLEVR --max_retries: placement tries before restarting the scene
MIN_VISIBLE_FRACTION = 200 / (320 * 240)  # CLEVR --min_pixels_per_object at 320x240
VISIBILITY_RES = 64
SPLIT_NAMES = ("train", "val", "test")

# Blender's default camera, which CLEVR's base scene uses (jitter off).
CAM_POS = np.array([7.358891, -6.925791, 4.958309])
CAM_EULER_DEG = (63.559, 0.0, 46.692)
LENS_MM, SENSOR_MM = 35.0, 32.0
ASPECT = 240 / 320  # CLEVR's frame, height over width

BEVEL = 0.12  # fraction of the half size over which an edge's normal turns
KEY_LIGHT = np.array([0.63, 0.23, 1.0]) / np.linalg.norm([0.63, 0.23, 1.0])
FILL_LIGHT = np.array([-0.7, -0.5, 0.6]) / np.linalg.norm([-0.7, -0.5, 0.6])
_KEY32 = KEY_LIGHT.astype(np.float32)
_LIGHTS = np.stack([KEY_LIGHT, FILL_LIGHT], axis=1).astype(np.float32)  # (3, 2)


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: position, orthonormal right/up/forward, tan of the half fields of view.

    The frustum is CLEVR's 4:3 one drawn onto a square image (non-square pixels), so a render
    at S x S is what a real 320x240 CLEVR image resized to S x S looks like.
    """

    pos: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    tan_x: float
    tan_y: float

    def project(self, points: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
        """(N, 3) world points -> (N, 3) continuous (u, v, depth): u right, v down, in pixels
        of a width x height image (square by default); depth along the view axis."""
        height = width if height is None else height
        q = np.asarray(points, dtype=np.float64) - self.pos
        depth = q @ self.forward
        x = (q @ self.right) / (depth * self.tan_x)
        y = (q @ self.up) / (depth * self.tan_y)
        return np.stack([(x + 1) * 0.5 * width, (1 - y) * 0.5 * height, depth], axis=-1)


def _euler_xyz(deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _make_camera() -> Camera:
    rot = _euler_xyz(CAM_EULER_DEG)
    # Blender cameras look down their local -Z with local +Y up.
    return Camera(
        pos=CAM_POS,
        right=rot @ np.array([1.0, 0, 0]),
        up=rot @ np.array([0, 1.0, 0]),
        forward=rot @ np.array([0, 0, -1.0]),
        tan_x=SENSOR_MM / 2 / LENS_MM,
        tan_y=SENSOR_MM / 2 / LENS_MM * ASPECT,
    )


CAMERA = _make_camera()


def _ground_directions(cam: Camera) -> dict[str, tuple[float, float, float]]:
    """CLEVR's six directions: camera axes projected onto the ground plane (z up)."""
    behind = np.array([cam.forward[0], cam.forward[1], 0.0])
    behind /= np.linalg.norm(behind)
    left = np.array([-cam.right[0], -cam.right[1], 0.0])
    left /= np.linalg.norm(left)
    # `+ 0.0` turns -0.0 into 0.0, so the JSON reads as CLEVR's does.
    return {
        "behind": tuple(float(v) + 0.0 for v in behind),
        "front": tuple(float(-v) + 0.0 for v in behind),
        "left": tuple(float(v) + 0.0 for v in left),
        "right": tuple(float(-v) + 0.0 for v in left),
        "above": (0.0, 0.0, 1.0),
        "below": (0.0, 0.0, -1.0),
    }


DIRECTIONS = _ground_directions(CAMERA)


# --------------------------------------------------------------------------- sampling


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
    320x240 frame (`render_scene` recomputes them for the size it renders)."""
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
        _, ids = _hit_buffer([_Solid.from_object(o) for o in objects], VISIBILITY_RES)
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
    set_pixel_coords(scene, 320, 240)
    return scene


def set_pixel_coords(scene: Scene, width: int, height: int | None = None) -> None:
    """Fill each object's `pixel_coords` for a width x height image (square by default):
    u, v rounded to whole pixels as CLEVR does, and the depth along the view axis."""
    if not scene.objects:
        return
    uvd = CAMERA.project(np.array([o.coords_3d for o in scene.objects]), width, height)
    for obj, (u, v, d) in zip(scene.objects, uvd, strict=True):
        obj.pixel_coords = (float(round(u)), float(round(v)), round(float(d), 4))


# --------------------------------------------------------------------------- ray casting


@dataclass(frozen=True)
class _Solid:
    shape: str
    center: np.ndarray  # (3,)
    half: float  # sphere/cylinder radius and half height; cube half side
    theta: float  # rotation about z, radians
    rgb: np.ndarray  # (3,) in [0, 1]
    metal: bool

    @classmethod
    def from_object(cls, obj: SceneObject) -> _Solid:
        return cls(
            shape=obj.shape,
            center=np.asarray(obj.coords_3d, dtype=np.float64),
            half=float(obj.coords_3d[2]),
            theta=math.radians(obj.rotation),
            rgb=np.asarray(COLOR_RGB[obj.color], dtype=np.float32) / 255.0,
            metal=obj.material == "metal",
        )

    @property
    def footprint(self) -> float:
        """Radius of a vertical cylinder that contains the object."""
        return self.half * (math.sqrt(2) if self.shape == "cube" else 1.0)


@lru_cache(maxsize=8)
def _rays(n: int) -> np.ndarray:
    """(n, n, 3) float32 unit ray directions through pixel centres."""
    c = (np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(c, -c)
    d = (
        CAMERA.forward
        + (x * CAMERA.tan_x)[..., None] * CAMERA.right
        + (y * CAMERA.tan_y)[..., None] * CAMERA.up
    )
    d = (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)
    d.setflags(write=False)  # cached and shared between renders
    return d


def _windows(corners: np.ndarray, n: int) -> list[tuple[int, int, int, int]]:
    """Pixel windows (r0, r1, c0, c1) around the projections of (M, K, 3) corner sets."""
    m, k, _ = corners.shape
    uv = CAMERA.project(corners.reshape(-1, 3), n)[:, :2].reshape(m, k, 2)
    lo = np.clip(np.floor(uv.min(axis=1)).astype(int) - 1, 0, n)
    hi = np.clip(np.ceil(uv.max(axis=1)).astype(int) + 1, 0, n)
    return [(r0, r1, c0, c1) for (c0, r0), (c1, r1) in zip(lo.tolist(), hi.tolist(), strict=True)]


def _object_windows(solids: Sequence[_Solid], n: int) -> list[tuple[int, int, int, int]]:
    """Windows containing each object: its bounding cylinder's box, projected."""
    if not solids:
        return []
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (0, 1)], float)
    corners = np.array(
        [s.center * [1, 1, 0] + signs * [s.footprint, s.footprint, 2 * s.half] for s in solids]
    )
    return _windows(corners, n)


def _bevel_normal(p: np.ndarray) -> np.ndarray:
    """Normal of a box/cylinder point in units of its half size, edges rounded over BEVEL."""
    n = np.sign(p) * np.maximum(np.abs(p) - (1 - BEVEL), 0.0)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32)


def _intersect(solid: _Solid, d: np.ndarray) -> np.ndarray:
    """Ray parameter t of the first hit for unit rays `d` (..., 3) from the camera; a miss is
    inf or NaN (both fail `t < zbuf`).

    Misses divide by zero and take roots of negatives on purpose; callers run under
    `np.errstate`, once per image rather than once per object.
    """
    oc = (CAMERA.pos - solid.center).astype(np.float32)
    h = np.float32(solid.half)
    if solid.shape == "sphere":
        b = d @ oc
        return -b - np.sqrt(b * b - (oc @ oc - h * h))
    if solid.shape == "cube":
        rot = _rotation(solid.theta)
        o_l, d_l = rot.T @ oc, d @ rot  # slabs in the cube's own frame
        t1, t2 = (-h - o_l) / d_l, (h - o_l) / d_l
        tn = np.minimum(t1, t2).max(axis=-1)
        tf = np.maximum(t1, t2).min(axis=-1)
        return np.where((tn <= tf) & (tf > 0), tn, np.inf)
    # cylinder: axis z, radius = half height = h; the camera is above, so no bottom cap
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a = dx * dx + dy * dy
    b = dx * oc[0] + dy * oc[1]
    t_side = (-b - np.sqrt(b * b - a * (oc[0] ** 2 + oc[1] ** 2 - h * h))) / a
    t_side = np.where(np.abs(oc[2] + t_side * dz) <= h, t_side, np.inf)
    t_top = (h - oc[2]) / dz
    x, y = oc[0] + t_top * dx, oc[1] + t_top * dy
    t_top = np.where(x * x + y * y <= h * h, t_top, np.inf)
    return np.minimum(t_side, t_top)


def _normal(solid: _Solid, d: np.ndarray, t: np.ndarray) -> np.ndarray:
    """World normals (K, 3) at the hits `t` (K,) of rays `d` (K, 3)."""
    p = ((CAMERA.pos - solid.center).astype(np.float32) + t[:, None] * d) / np.float32(solid.half)
    if solid.shape == "sphere":
        return p
    if solid.shape == "cube":
        rot = _rotation(solid.theta)
        return _bevel_normal(p @ rot) @ rot.T
    rho = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2)
    radial = _bevel_normal(np.stack([rho, p[:, 2]], axis=-1))
    scale = radial[:, 0] / np.maximum(rho, 1e-6)
    return np.stack([p[:, 0] * scale, p[:, 1] * scale, radial[:, 1]], axis=-1)


@np.errstate(divide="ignore", invalid="ignore")
def _hit_buffer(solids: Sequence[_Solid], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-hit depth (t) and object index (-1 for ground) per pixel at n x n."""
    rays = _rays(n)
    zbuf = np.full((n, n), np.inf, dtype=np.float32)
    ids = np.full((n, n), -1, dtype=np.int16)
    for i, (solid, (r0, r1, c0, c1)) in enumerate(
        zip(solids, _object_windows(solids, n), strict=True)
    ):
        if r0 >= r1 or c0 >= c1:
            continue
        t = _intersect(solid, rays[r0:r1, c0:c1])
        near = t < zbuf[r0:r1, c0:c1]
        zbuf[r0:r1, c0:c1][near] = t[near]
        ids[r0:r1, c0:c1][near] = i
    return zbuf, ids


# --------------------------------------------------------------------------- shading


@lru_cache(maxsize=8)
def _ground(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground colour (n, n, 3) with a soft radial falloff, and ground hit points (n, n, 2)."""
    d = _rays(n).astype(np.float64)
    t = -CAMERA.pos[2] / np.minimum(d[..., 2], -1e-3)  # every ray of this camera hits the ground
    p = CAMERA.pos[:2] + t[..., None] * d[..., :2]
    r2 = ((p - np.array([-0.5, 0.5])) ** 2).sum(-1)
    shade = 0.36 + 0.26 * np.exp(-r2 / (2 * 5.5**2))
    rgb = shade[..., None] * np.array([1.0, 1.0, 1.02])
    return rgb.astype(np.float32), p.astype(np.float32)


def _shade(solid: _Solid, d: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Colour (K, 3) for K hits with unit view rays `d` (K, 3) and unit normals (K, 3)."""
    lit = normal @ _LIGHTS  # (K, 2): n.key, n.fill
    n_key = np.maximum(lit[:, 0], 0)
    n_d = np.einsum("ij,ij->i", normal, d)
    # Blinn-Phong n.h with h = (key - d) / |key - d| and |key - d|^2 = 2 - 2 key.d.
    n_half = np.maximum((lit[:, 0] - n_d) / np.sqrt(np.maximum(2 - 2 * (d @ _KEY32), 1e-6)), 0)
    if not solid.metal:
        shade = 0.30 + 0.80 * n_key + 0.18 * np.maximum(lit[:, 1], 0)
        spec = 0.06 * n_half**8
    else:
        # A tinted mirror of a dark-ground / bright-sky environment plus a sharp highlight.
        refl_z = d[:, 2] - 2 * n_d * normal[:, 2]
        shade = 0.42 + 0.25 * n_key + 0.80 * np.clip(refl_z * 2.0 + 0.3, 0, 1)
        spec = 0.9 * n_half**60
    return shade[:, None] * solid.rgb + spec[:, None]


def _shadows(solids: Sequence[_Solid], ground_xy: np.ndarray) -> np.ndarray:
    """Soft shadows (0..1) on the ground: each object's capsule proxy seen from the key light."""
    n = ground_xy.shape[0]
    shadow = np.zeros((n, n), dtype=np.float32)
    if not solids:
        return shadow
    offset = -KEY_LIGHT[:2] / KEY_LIGHT[2]  # ground displacement per unit of height
    centers = np.array([s.center[:2] for s in solids])
    half = np.array([s.half for s in solids])[:, None]
    top = np.array([1.5 if s.shape == "sphere" else 2.0 for s in solids])[:, None]
    rad = np.array([s.footprint * (0.9 if s.shape == "sphere" else 0.8) for s in solids])
    a = (centers + offset * half * 0.5).astype(np.float32)
    b = (centers + offset * half * top).astype(np.float32)
    lo = np.minimum(a, b) - 1.4 * rad[:, None]
    hi = np.maximum(a, b) + 1.4 * rad[:, None]
    corners = np.stack(
        [
            np.stack([xs[:, 0], ys[:, 1], np.zeros(len(solids))], -1)
            for xs in (lo, hi)
            for ys in (lo, hi)
        ],
        axis=1,
    )
    for k, (r0, r1, c0, c1) in enumerate(_windows(corners, n)):
        p = ground_xy[r0:r1, c0:c1]
        ab = b[k] - a[k]
        s = np.clip(((p - a[k]) @ ab) / max(float(ab @ ab), 1e-9), 0, 1)
        diff = p - (a[k] + s[..., None] * ab)
        dist = np.sqrt((diff * diff).sum(-1))
        strength = np.clip((1.3 * rad[k] - dist) / (0.6 * rad[k]), 0, 1)
        np.maximum(
            shadow[r0:r1, c0:c1], strength * strength * (3 - 2 * strength), out=shadow[r0:r1, c0:c1]
        )
    return shadow


@dataclass
class RenderLayers:
    """A render with its per-pixel object index (-1 ground) and camera distance (inf ground)."""

    image: np.ndarray  # (S, S, 3) uint8
    object_ids: np.ndarray  # (S, S) int16
    depth: np.ndarray  # (S, S) float32


@np.errstate(divide="ignore", invalid="ignore")
def render_layers(scene: Scene, size: int, supersample: int = 2) -> RenderLayers:
    """Render `scene` at size x size; also (re)sets each object's `pixel_coords` for that size."""
    if size < 8:
        raise ValueError(f"render size must be at least 8 pixels, got {size}")
    n = size * supersample
    solids = [_Solid.from_object(o) for o in scene.objects]
    # The ground and its soft shadows are smooth: shade them at the output size. Only objects
    # are ray cast at the supersampled size, into a colour buffer that is zero off-object.
    ground_rgb, ground_xy = _ground(size)
    base = ground_rgb * (1 - 0.5 * _shadows(solids, ground_xy))[..., None]

    rays = _rays(n)
    zbuf = np.full((n, n), np.inf, dtype=np.float32)
    ids = np.full((n, n), -1, dtype=np.int16)
    color = np.zeros((n, n, 3), dtype=np.float32)
    windows = _object_windows(solids, n)
    for i, (solid, (r0, r1, c0, c1)) in enumerate(zip(solids, windows, strict=True)):
        if r0 >= r1 or c0 >= c1:
            continue
        d = rays[r0:r1, c0:c1]
        t = _intersect(solid, d)
        near = t < zbuf[r0:r1, c0:c1]
        if not near.any():
            continue
        t_hit, d_hit = t[near], d[near]
        zbuf[r0:r1, c0:c1][near] = t_hit
        ids[r0:r1, c0:c1][near] = i
        color[r0:r1, c0:c1][near] = _shade(solid, d_hit, _normal(solid, d_hit, t_hit))

    img = base
    if windows:
        # Box-filter only the rows and columns some object can touch.
        ss = supersample
        r0 = min(w[0] for w in windows) // ss
        r1 = -(-max(w[1] for w in windows) // ss)
        c0 = min(w[2] for w in windows) // ss
        c1 = -(-max(w[3] for w in windows) // ss)
        hit = np.isfinite(zbuf[r0 * ss : r1 * ss, c0 * ss : c1 * ss]).astype(np.float32)
        col = color[r0 * ss : r1 * ss, c0 * ss : c1 * ss]
        cover = _box_down(hit, ss)
        img[r0:r1, c0:c1] = img[r0:r1, c0:c1] * (1 - cover)[..., None] + _box_down(col, ss)
    if supersample > 1:
        mid = supersample // 2
        ids = ids[mid::supersample, mid::supersample]
        zbuf = zbuf[mid::supersample, mid::supersample]
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    set_pixel_coords(scene, size)
    return RenderLayers(image=image, object_ids=ids, depth=zbuf)


def _box_down(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of the first two axes."""
    if k == 1:
        return x
    total = x[0::k, 0::k].copy()
    for i in range(k):
        for j in range(k):
            if i or j:
                total += x[i::k, j::k]
    return total * (1.0 / (k * k))


def render_scene(scene: Scene, size: int) -> np.ndarray:
    """(size, size, 3) uint8 image of `scene`; fills `pixel_coords` for this size."""
    return render_layers(scene, size).image


# --------------------------------------------------------------------------- dataset writing


def split_counts(n: int, splits: Sequence[float]) -> dict[str, int]:
    """Images per split (train/val/test) by largest remainder, so the counts sum to n."""
    if len(splits) != 3 or any(f < 0 for f in splits) or sum(splits) <= 0:
        raise ValueError(f"splits must be three non-negative fractions, got {tuple(splits)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    total = float(sum(splits))
    exact = [n * f / total for f in splits]
    counts = [int(math.floor(e)) for e in exact]
    order = sorted(range(3), key=lambda k: (counts[k] - exact[k], k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return dict(zip(SPLIT_NAMES, counts, strict=True))


def write_png(path: Path, image: np.ndarray, compress_level: int = 1) -> None:
    """Write a PNG through a temporary name, so an interrupted run leaves no torn file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            Image.fromarray(image).save(handle, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _Chunk:
    """Images [start, stop) of one split: the unit of work a process renders."""

    out: str
    split: str
    split_id: int
    start: int
    stop: int
    seed: int
    size: int


def _render_chunk(chunk: _Chunk) -> list[Scene]:
    img_dir = Path(chunk.out) / "images" / chunk.split
    scenes = []
    for i in range(chunk.start, chunk.stop):
        scene = sample_scene(np.random.default_rng([chunk.seed, chunk.split_id, i]), i, chunk.split)
        write_png(img_dir / scene.image_filename, render_scene(scene, chunk.size))
        scenes.append(scene)
    return scenes


def generate_dataset(
    out: Path,
    n: int,
    size: int = 128,
    seed: int = 0,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
    workers: int = 1,
) -> dict[str, int]:
    """Render `n` scenes into CLEVR's layout under `out`; returns images per split.

    `workers > 1` renders in that many processes; the bytes written do not depend on it.
    """
    out = Path(out)
    counts = split_counts(n, splits)
    info = {
        "version": "1.0",
        "license": "Creative Commons Attribution (CC-BY 4.0)",
        "generator": "strop clevr-synth",
        "seed": seed,
        "image_size": size,
    }
    chunk_len = 25
    chunks = []
    for split_id, split in enumerate(SPLIT_NAMES):
        if counts[split]:
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, counts[split], chunk_len):
            stop = min(start + chunk_len, counts[split])
            chunks.append(_Chunk(str(out), split, split_id, start, stop, seed, size))
    scenes: dict[str, list[Scene]] = {split: [] for split in SPLIT_NAMES}
    with _progress(progress) as bar, _pool(workers) as pool:
        task = bar.add_task(f"rendering {n} scenes at {size}px", total=n)
        results = pool.imap(_render_chunk, chunks) if pool else map(_render_chunk, chunks)
        for chunk, done in zip(chunks, results, strict=True):
            scenes[chunk.split].extend(done)
            bar.advance(task, len(done))
    for split in SPLIT_NAMES:
        path = out / "scenes" / f"CLEVR_{split}_scenes.json"
        if counts[split]:
            save_scenes(path, scenes[split], {**info, "split": split})
        else:
            path.unlink(missing_ok=True)
        _remove_stale_images(out / "images" / split, split, counts[split])
    return counts


def _remove_stale_images(folder: Path, split: str, count: int) -> None:
    """Delete our own `CLEVR_<split>_NNNNNN.png` files numbered >= count (left by an earlier,
    larger run into the same folder), so a folder always matches its scenes file."""
    if not folder.is_dir():
        return
    prefix = f"CLEVR_{split}_"
    for path in folder.glob(f"{prefix}*.png"):
        number = path.stem[len(prefix) :]
        if number.isdigit() and len(number) == 6 and int(number) >= count:
            path.unlink()


@contextmanager
def _pool(workers: int):
    """A process pool for `workers > 1`, else None. Fork where available: the children only
    run NumPy and PIL, and fork avoids re-importing the caller's main module."""
    if workers <= 1:
        yield None
        return
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        yield pool


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
