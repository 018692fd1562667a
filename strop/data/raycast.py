"""Ray casting: analytic ray/solid intersection, bevelled normals, and the z-buffer.

Design decisions
- Rendering is ray casting, not polygon filling: every pixel's camera ray is intersected
  analytically with each object (sphere, rotated box via slabs, capped cylinder) inside that
  object's projected bounding box, and a z-buffer keeps the nearest hit. Painter's order by
  centre distance is wrong for a small object touching a large one; a per-pixel depth test is
  exact, and casting only inside each object's bounding box keeps it cheap.
- Edges of cubes and cylinders are bevelled through the normal only (`BEVEL`), which gives the
  highlights of CLEVR's SmoothCube/SmoothCylinder without extra geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strop.data.camera import CAMERA, pixel_rays
from strop.scenes import SceneObject

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

BEVEL = 0.12  # fraction of the half size over which an edge's normal turns


@dataclass(frozen=True)
class Solid:
    shape: str
    center: np.ndarray  # (3,)
    half: float  # sphere/cylinder radius and half height; cube half side
    theta: float  # rotation about z, radians
    rgb: np.ndarray  # (3,) in [0, 1]
    metal: bool

    @classmethod
    def from_object(cls, obj: SceneObject) -> Solid:
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


def pixel_windows(corners: np.ndarray, n: int) -> list[tuple[int, int, int, int]]:
    """Pixel windows (r0, r1, c0, c1) around the projections of (M, K, 3) corner sets."""
    m, k, _ = corners.shape
    uv = CAMERA.project(corners.reshape(-1, 3), n)[:, :2].reshape(m, k, 2)
    lo = np.clip(np.floor(uv.min(axis=1)).astype(int) - 1, 0, n)
    hi = np.clip(np.ceil(uv.max(axis=1)).astype(int) + 1, 0, n)
    return [(r0, r1, c0, c1) for (c0, r0), (c1, r1) in zip(lo.tolist(), hi.tolist(), strict=True)]


def object_windows(solids: Sequence[Solid], n: int) -> list[tuple[int, int, int, int]]:
    """Windows containing each object: its bounding cylinder's box, projected."""
    if not solids:
        return []
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (0, 1)], float)
    corners = np.array(
        [s.center * [1, 1, 0] + signs * [s.footprint, s.footprint, 2 * s.half] for s in solids]
    )
    return pixel_windows(corners, n)


def _bevel_normal(p: np.ndarray) -> np.ndarray:
    """Normal of a box/cylinder point in units of its half size, edges rounded over BEVEL."""
    n = np.sign(p) * np.maximum(np.abs(p) - (1 - BEVEL), 0.0)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float32)


def intersect(solid: Solid, d: np.ndarray) -> np.ndarray:
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


def surface_normal(solid: Solid, d: np.ndarray, t: np.ndarray) -> np.ndarray:
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
def hit_buffer(solids: Sequence[Solid], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-hit depth (t) and object index (-1 for ground) per pixel at n x n."""
    rays = pixel_rays(n)
    zbuf = np.full((n, n), np.inf, dtype=np.float32)
    ids = np.full((n, n), -1, dtype=np.int16)
    for i, (solid, (r0, r1, c0, c1)) in enumerate(
        zip(solids, object_windows(solids, n), strict=True)
    ):
        if r0 >= r1 or c0 >= c1:
            continue
        t = intersect(solid, rays[r0:r1, c0:c1])
        near = t < zbuf[r0:r1, c0:c1]
        zbuf[r0:r1, c0:c1][near] = t[near]
        ids[r0:r1, c0:c1][near] = i
    return zbuf, ids
