"""CLEVR's camera: projection to pixels, camera rays, and the ground directions.

Design decisions (each number checked on real CLEVR v1.0 annotation files, the first 1,000
train and 500 val scenes of the official ones; `docs/REAL_CLEVR.md` describes the sample)
- Real CLEVR v1.0 images are 480 x 320 and their `pixel_coords` are `[u, v, depth]` in that
  frame (`CLEVR_FRAME`). The lens is Blender's 35 mm on a 32 mm sensor fitted to the width,
  so the frustum is 3:2 (`ASPECT`), the shape of the image: pixels are square at 480 x 320.
- The camera is CLEVR's base-scene camera, not Blender's default one. Its yaw comes from the
  scenes' `directions` (the camera axes projected on the ground): they are identical in all
  1,500 scenes and put the yaw at 48.981 deg. CLEVR computes them before its per-image camera
  jitter reaches the camera's matrix, so they cannot recover the jitter, only the base
  orientation. Position and pitch are a least-squares fit of the projected `3d_coords` to the
  `pixel_coords` of the 1,000 train scenes (6,455 objects; yaw, lens and frame fixed). Error
  (Euclidean, px at 480 x 320): median 3.61 / p90 7.33 on those train scenes, 3.51 / 7.27 on
  the 500 val scenes; Blender's default camera with the same 3:2 frustum gives 5.82 / 12.19,
  and with the old 4:3 frustum 7.15 / 15.41. The rest is CLEVR's per-image jitter of the
  camera position (uniform +-0.5 per axis): fitting a translation per image brings the median
  down to about 2.3 px (`strop.data.camera_check`, which prints all of these).
- Synthetic renders are square: the 3:2 frustum is drawn onto the S x S image (non-square
  pixels), which is what a real 480 x 320 CLEVR image resized to S x S by the loaders looks
  like. Their `pixel_coords` are in pixels of the rendered size, and the scenes file records
  that frame (`info.pixel_frame`, written by `generate_dataset`).
- The six `directions` are CLEVR's: the camera's forward and right axes projected onto the
  ground plane, plus straight up and down. They equal the real files' to 2e-6 (the yaw is rounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from strop.scenes import Scene

#: Real CLEVR v1.0's image size, the frame its `pixel_coords` are in: (width, height).
CLEVR_FRAME = (480, 320)
# CLEVR's base-scene camera, jitter off: yaw from the real `directions`, position and pitch
# fitted to real `pixel_coords` (module docstring).
CAM_POS = np.array([7.4877, -6.5131, 5.3256])
CAM_EULER_DEG = (61.783, 0.0, 48.981)
LENS_MM, SENSOR_MM = 35.0, 32.0  # the sensor width spans the image width (Blender's AUTO fit)
ASPECT = CLEVR_FRAME[1] / CLEVR_FRAME[0]  # frustum height over width: 3:2


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: position, orthonormal right/up/forward, tan of the half fields of view.

    The frustum is CLEVR's 3:2 one. Projected onto a W x H frame: 480 x 320 is real CLEVR's
    (square pixels), S x S is a render, or a real image resized to S x S (non-square pixels).
    """

    pos: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    tan_x: float
    tan_y: float

    def project(self, points: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
        """(N, 3) world points -> (N, 3) continuous (u, v, depth): u right, v down, in pixels
        of a width x height frame (square by default); depth along the view axis."""
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


def make_camera(
    pos: np.ndarray, euler_deg: tuple[float, float, float], tan_x: float, tan_y: float
) -> Camera:
    """A Blender camera at `pos` with Euler XYZ angles (degrees) and half-field tangents."""
    rot = _euler_xyz(euler_deg)
    # Blender cameras look down their local -Z with local +Y up.
    return Camera(
        pos=np.asarray(pos, dtype=np.float64),
        right=rot @ np.array([1.0, 0, 0]),
        up=rot @ np.array([0, 1.0, 0]),
        forward=rot @ np.array([0, 0, -1.0]),
        tan_x=tan_x,
        tan_y=tan_y,
    )


_TAN_X = SENSOR_MM / 2 / LENS_MM
CAMERA = make_camera(CAM_POS, CAM_EULER_DEG, _TAN_X, _TAN_X * ASPECT)


def _ground_directions(cam: Camera) -> dict[str, tuple[float, float, float]]:
    """CLEVR's six directions: camera axes projected onto the ground plane (z up)."""
    behind = np.array([cam.forward[0], cam.forward[1], 0.0])
    behind /= np.linalg.norm(behind)
    left = np.array([-cam.right[0], -cam.right[1], 0.0])
    left /= np.linalg.norm(left)

    def vec(v: np.ndarray) -> tuple[float, float, float]:
        # `+ 0.0` turns -0.0 into 0.0, so the JSON reads as CLEVR's does.
        return (float(v[0]) + 0.0, float(v[1]) + 0.0, float(v[2]) + 0.0)

    return {
        "behind": vec(behind),
        "front": vec(-behind),
        "left": vec(left),
        "right": vec(-left),
        "above": (0.0, 0.0, 1.0),
        "below": (0.0, 0.0, -1.0),
    }


DIRECTIONS = _ground_directions(CAMERA)


def set_pixel_coords(scene: Scene, width: int, height: int | None = None) -> None:
    """Fill each object's `pixel_coords` for a width x height frame (square by default):
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
