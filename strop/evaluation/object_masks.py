"""Object masks from scene pixel coordinates, and the overlap measure used to compare them
with token attribution (`best_iou`; `strop.evaluation.analyze` gathers the agreement).

Paper Sec. 4 "Program structure", App. D and G:

- attribution: each patch goes to its most influential token, `A(p) = argmax_j E_j(p)`;
- agreement with objects: each object's mask (from the scene's `pixel_coords`) against the
  attributed regions, as the best IoU over tokens, beside a spatially shuffled attribution
  (same region sizes, random placement) as chance;
- the attribute-token pairs behind the contingency table: every object patch counts once for
  (attribute value, code of the token attributed to that patch).

Design decisions
- Object masks are discs around each object's projected centre, with radius
  `(S / 2) * r_world / (depth * tan(fov_x / 2))` (CLEVR's 35 mm lens on a 32 mm sensor,
  `r_world` 0.7 large / 0.35 small), in the model's S x S input, so they are independent of the
  source resolution; `pixel_coords` are rescaled from the frame they were computed in
  (`pixel_frame`: the synthetic render size, or real CLEVR's 320x240). Overlaps go to the
  nearer object. A patch belongs to a mask when its centre is inside the disc (the centre's
  own patch always does).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from strop.scenes import Scene

ATTRIBUTES = ("color", "shape", "material", "size")


def object_radius_px(size: str, depth: float, image_size: int) -> float:
    """Projected radius (model pixels) of a CLEVR object of `size` at camera distance `depth`."""
    from strop.data.renderer import LENS_MM, SENSOR_MM, SIZE_RADIUS

    tan_half_fov = SENSOR_MM / 2 / LENS_MM
    return image_size / 2 * SIZE_RADIUS[size] / (max(depth, 1e-3) * tan_half_fov)


def object_label_map(
    scene: Scene, grid: tuple[int, int], image_size: int, source_size: tuple[int, int] | None
) -> np.ndarray:
    """(gh * gw,) object index per patch (row-major), -1 for background; nearer objects win."""
    gh, gw = grid
    ys = (np.arange(gh) + 0.5) * image_size / gh
    xs = (np.arange(gw) + 0.5) * image_size / gw
    py, px = np.meshgrid(ys, xs, indexing="ij")
    labels = np.full((gh, gw), -1, dtype=np.int64)
    sw, sh = source_size or (image_size, image_size)
    placed = [(i, o) for i, o in enumerate(scene.objects) if o.pixel_coords is not None]
    for i, obj in sorted(placed, key=lambda t: -t[1].pixel_coords[2]):  # far to near
        u, v, depth = obj.pixel_coords
        u, v = u * image_size / sw, v * image_size / sh
        r = object_radius_px(obj.size, depth, image_size)
        inside = (px - u) ** 2 + (py - v) ** 2 <= r * r
        row, col = (
            int(np.clip(v * gh / image_size, 0, gh - 1)),
            int(np.clip(u * gw / image_size, 0, gw - 1)),
        )
        inside[row, col] = True
        labels[inside] = i
    return labels.reshape(-1)


#: The frame real CLEVR v1.0 computed `pixel_coords` in (its renderer's default 320x240),
#: whatever the size of the released PNGs.
CLEVR_FRAME = (320, 240)


def pixel_frame(root: Path, split: str, scene: Scene) -> tuple[int, int] | None:
    """(width, height) that the scene's `pixel_coords` refer to.

    Synthetic scenes files record `info.image_size` (coordinates in rendered pixels); real
    CLEVR's files do not, and use `CLEVR_FRAME`. Without a scenes file, the image's own size.
    """
    from PIL import Image

    for base in (root, root / "CLEVR_v1.0"):
        scenes_file = base / "scenes" / f"CLEVR_{split}_scenes.json"
        if scenes_file.is_file():
            size = _info_image_size(scenes_file)
            return (size, size) if size else CLEVR_FRAME
        path = base / "images" / split / scene.image_filename
        if path.is_file():
            with Image.open(path) as img:
                return img.size
    return None


@functools.lru_cache(maxsize=8)
def _info_image_size(scenes_file: Path) -> int | None:
    """`info.image_size` of a scenes file, read from its head (files can hold 70k scenes)."""
    with open(scenes_file, encoding="utf-8") as handle:
        head = handle.read(4096)
    match = re.search(r'"image_size"\s*:\s*(\d+)', head.split('"scenes"')[0])
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- agreement


def best_iou(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Max over tokens of IoU(region of token, mask)."""
    best = 0.0
    for token in np.unique(attribution[mask]):
        region = attribution == token
        best = max(best, float((region & mask).sum() / (region | mask).sum()))
    return best
