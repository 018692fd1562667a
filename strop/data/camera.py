"""CLEVR's camera: projection to pixels, camera rays, and the ground directions.

Design decisions
- The camera is CLEVR's default Blender camera (position, Euler angles, 35 mm lens on a 32 mm
  sensor) without the per-image jitter, so `directions` are the same in every scene. Its 4:3
  frustum is drawn onto the square image (non-square pixels): an S x S render frames the
  scene as a real 320x240 CLEVR image resized to S x S does, which is how the loaders feed
  real CLEVR. `pixel_coords` are in pixels of the rendered size (real CLEVR's: 320x240).
- The six `directions` are CLEVR's: the camera's forward and right axes projected onto the
  ground plane, plus straight up and down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from strop.scenes import Scene

# Blender's default camera, which CLEVR's base scene uses (jitter off).
CAM_POS = np.array([7.358891, -6.925791, 4.958309])
CAM_EULER_DEG = (63.559, 0.0, 46.692)
LENS_MM, SENSOR_MM = 35.0, 32.0
ASPECT = 240 / 320  # CLEVR's frame, height over width


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


def set_pixel_coords(scene: Scene, width: int, height: int | None = None) -> None:
    """Fill each object's `pixel_coords` for a width x height image (square by default):
    u, v rounded to whole pixels as CLEVR does, and the depth along the view axis."""
    if not scene.objects:
        return
    uvd = CAMERA.project(np.array([o.coords_3d for o in scene.objects]), width, height)
    for obj, (u, v, d) in zip(scene.objects, uvd, strict=True):
        obj.pixel_coords = (float(round(u)), float(round(v)), round(float(d), 4))


@lru_cache(maxsize=8)
def pixel_rays(n: int) -> np.ndarray:
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
