"""How well our camera reproduces real CLEVR's `pixel_coords`: the check behind `camera.py`.

    python -m strop.data.camera_check CLEVR_v1.0/scenes/CLEVR_train_scenes.json

(`docs/REAL_CLEVR.md` gives the figures on the 1,000-scene sample we checked it on)

prints, for a real CLEVR scenes file, the Euclidean distance (pixels of the 480 x 320 frame)
between each object's `pixel_coords` and its `3d_coords` projected by
- `CAMERA` (ours: CLEVR's base-scene camera, 3:2 frustum),
- Blender's default camera with a 4:3 and with a 3:2 frustum (what the code used before),
- `CAMERA` moved by a translation fitted per image (CLEVR jitters the camera position per
  image, and no field of the scene records by how much), which bounds what any fixed camera
  can reach,
and the yaw that the scenes' `directions` imply.

Design decisions
- The per-image fit is a least-squares translation of the camera (orientation fixed, as
  CLEVR's jitter moves the camera's location only) over that image's objects, solved by
  `scipy.optimize.least_squares` from zero. It uses the `pixel_coords` it is scored on, so it is
  a diagnostic of how much error the jitter explains, not a way to project new scenes.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from strop.data.camera import CAMERA, CLEVR_FRAME, LENS_MM, SENSOR_MM, Camera, make_camera
from strop.scenes import Scene, load_scenes

#: Blender's default camera (position, Euler XYZ degrees), which the code used before.
BLENDER_DEFAULT = (np.array([7.358891, -6.925791, 4.958309]), (63.559, 0.0, 46.692))


def projection_errors(
    scenes: Sequence[Scene], camera: Camera = CAMERA, frame: tuple[int, int] = CLEVR_FRAME
) -> np.ndarray:
    """Euclidean distance (px) between each object's projected `3d_coords` and its
    `pixel_coords`, over every object that has both, in scene order."""
    points, pixels = _annotated(scenes)
    if not points:
        return np.zeros(0)
    uv = camera.project(np.array(points), *frame)[:, :2]
    return np.linalg.norm(uv - np.array(pixels), axis=1)


def jitter_fit_errors(
    scenes: Sequence[Scene], camera: Camera = CAMERA, frame: tuple[int, int] = CLEVR_FRAME
) -> np.ndarray:
    """`projection_errors` after moving the camera by a translation fitted to each scene."""
    from scipy.optimize import least_squares

    out = []
    for scene in scenes:
        points, pixels = _annotated([scene])
        if not points:
            continue
        p, uv = np.array(points), np.array(pixels)

        def residual(t: np.ndarray, p: np.ndarray = p, uv: np.ndarray = uv) -> np.ndarray:
            moved = replace(camera, pos=camera.pos + t)
            return (moved.project(p, *frame)[:, :2] - uv).ravel()

        fit = least_squares(residual, np.zeros(3))
        out.append(np.linalg.norm(fit.fun.reshape(-1, 2), axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def yaw_from_directions(scene: Scene) -> float:
    """Camera yaw (degrees, Blender's Euler Z) implied by a scene's `behind` direction: the
    camera's forward axis on the ground is at yaw + 90 degrees."""
    bx, by, _ = scene.directions["behind"]
    return math.degrees(math.atan2(by, bx)) - 90.0


def _annotated(scenes: Sequence[Scene]) -> tuple[list, list]:
    points, pixels = [], []
    for scene in scenes:
        for obj in scene.objects:
            if obj.pixel_coords is not None:
                points.append(obj.coords_3d)
                pixels.append(obj.pixel_coords[:2])
    return points, pixels


def _row(name: str, errors: np.ndarray) -> str:
    return (
        f"{name:<34} median {np.median(errors):5.2f}  p90 {np.percentile(errors, 90):5.2f}  "
        f"mean {errors.mean():5.2f} px"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenes", help="a real CLEVR scenes file (CLEVR_<split>_scenes.json)")
    args = parser.parse_args(argv)
    _, scenes = load_scenes(args.scenes)
    pos, euler = BLENDER_DEFAULT
    tan_x = SENSOR_MM / 2 / LENS_MM
    yaws = sorted({round(yaw_from_directions(s), 6) for s in scenes if "behind" in s.directions})
    n = sum(len(s.objects) for s in scenes)
    print(f"{args.scenes}: {len(scenes)} scenes, {n} objects, frame {CLEVR_FRAME}")
    print(f"yaw implied by `directions`: {yaws[:3]} ({len(yaws)} distinct)")
    print(_row("ours (CAMERA, 3:2)", projection_errors(scenes)))
    for name, aspect in (("Blender default camera, 4:3", 3 / 4), ("Blender default, 3:2", 2 / 3)):
        cam = make_camera(pos, euler, tan_x, tan_x * aspect)
        print(_row(name, projection_errors(scenes, cam)))
    print(_row("ours + per-image translation fit", jitter_fit_errors(scenes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
