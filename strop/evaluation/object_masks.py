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
- Object masks are ellipses around each object's projected centre: a sphere of radius
  `r_world` (0.7 large, 0.35 small) at camera distance `depth` spans `r_world / (depth *
  tan_x)` of the half width and `r_world / (depth * tan_y)` of the half height (CLEVR's 3:2
  frustum, `strop.data.camera`). In a W x H frame that is a disc when pixels are square (real
  480 x 320) and an ellipse 1.5 times taller than wide in a square S x S input. Masks are
  built in the frame asked for (the model's S x S grid, or an image's own pixels), so they do
  not depend on the source resolution; `pixel_coords` are rescaled from the frame they were
  computed in (`pixel_frame`). Overlaps go to the nearer object. A patch belongs to a mask
  when its centre is inside the ellipse (the centre's own patch always does).
- The frame comes from the data, never a hidden constant: a scenes file's `info.pixel_frame`
  (synthetic scenes write it; older ones `info.image_size`), else the size of the image file
  itself (real CLEVR: its 480 x 320 PNGs, which is the frame of its `pixel_coords`), else
  real CLEVR's `CLEVR_FRAME` when neither the info nor the image says.
- Checked on real data (`tests/test_data_real_clevr.py`): masks built from the 267 real
  train scenes at 480 x 320 hold pixels of the annotated colour for >= 90% of the objects.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from strop.data.camera import CAMERA, CLEVR_FRAME
from strop.data.placement import SIZE_RADIUS
from strop.scenes import ATTRIBUTES as ATTRIBUTES  # its home; evaluation imports it from here
from strop.scenes import Scene, SceneFileError, check_pixel_frame


def object_radii(size: str, depth: float, frame: tuple[int, int]) -> tuple[float, float]:
    """Projected (horizontal, vertical) radius in pixels of a W x H `frame` of a CLEVR object
    of `size` at camera distance `depth`."""
    w, h = frame
    r = SIZE_RADIUS[size] / max(depth, 1e-3)
    return w / 2 * r / CAMERA.tan_x, h / 2 * r / CAMERA.tan_y


def object_label_image(
    scene: Scene, frame: tuple[int, int], source: tuple[int, int] | None = None
) -> np.ndarray:
    """(H, W) object index per pixel of a W x H `frame`, -1 for background; nearer objects
    win. `source` is the frame the scene's `pixel_coords` are in (default: `frame`)."""
    w, h = frame
    return _ellipse_labels(scene, (h, w), frame, source or frame)


def object_label_map(
    scene: Scene, grid: tuple[int, int], image_size: int, source_size: tuple[int, int] | None
) -> np.ndarray:
    """(gh * gw,) object index per patch of an S x S input (row-major), -1 for background."""
    frame = (image_size, image_size)
    return _ellipse_labels(scene, grid, frame, source_size or frame).reshape(-1)


def _ellipse_labels(
    scene: Scene, grid: tuple[int, int], frame: tuple[int, int], source: tuple[int, int]
) -> np.ndarray:
    """Labels at the centres of a gh x gw grid laid over a W x H frame."""
    gh, gw = grid
    w, h = frame
    sw, sh = source
    ys = (np.arange(gh) + 0.5) * h / gh
    xs = (np.arange(gw) + 0.5) * w / gw
    py, px = np.meshgrid(ys, xs, indexing="ij")
    labels = np.full((gh, gw), -1, dtype=np.int64)
    placed = [(i, o, o.pixel_coords) for i, o in enumerate(scene.objects) if o.pixel_coords]
    for i, obj, (u, v, depth) in sorted(placed, key=lambda t: -t[2][2]):  # far to near
        u, v = u * w / sw, v * h / sh
        rx, ry = object_radii(obj.size, depth, frame)
        inside = ((px - u) / rx) ** 2 + ((py - v) / ry) ** 2 <= 1.0
        row = int(np.clip(v * gh / h, 0, gh - 1))
        col = int(np.clip(u * gw / w, 0, gw - 1))
        inside[row, col] = True
        labels[inside] = i
    return labels


def pixel_frame(root: Path, split: str, scene: Scene) -> tuple[int, int]:
    """(width, height) that the scene's `pixel_coords` refer to (module docstring)."""
    from PIL import Image

    for base in (root, root / "CLEVR_v1.0"):
        scenes_file = base / "scenes" / f"CLEVR_{split}_scenes.json"
        if scenes_file.is_file():
            frame = _info_frame(scenes_file)
            if frame:
                return frame
        path = base / "images" / split / scene.image_filename
        if path.is_file():
            with Image.open(path) as img:
                return img.size
    return CLEVR_FRAME


@functools.lru_cache(maxsize=8)
def _info_frame(scenes_file: Path) -> tuple[int, int] | None:
    """`info.pixel_frame` (or the older `info.image_size`) of a scenes file, or None."""
    info = leading_info(scenes_file)
    if info is None:
        return None
    if "pixel_frame" in info:
        return check_pixel_frame(info["pixel_frame"], f"{scenes_file}: field info.pixel_frame")
    size = info.get("image_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    return None


_CHUNK = 1 << 16


def leading_info(scenes_file: Path) -> dict[str, Any] | None:
    """The `info` object of a scenes file when it comes before `scenes` (the writers, ours and
    real CLEVR's, put it first), else None. Files can hold 70k scenes: the JSON decoder reads
    the top-level members in order and stops at `scenes`, so the list is never read."""
    decoder = json.JSONDecoder()
    with open(scenes_file, encoding="utf-8") as handle:
        text, at_end = "", False

        def more() -> bool:
            nonlocal text, at_end
            chunk = handle.read(max(_CHUNK, len(text)))
            text, at_end = text + chunk, not chunk
            return bool(chunk)

        def next_char(pos: int) -> tuple[str, int]:
            """The first character at or after `pos` that is not whitespace ('' at the end)."""
            while True:
                while pos < len(text) and text[pos] in " \t\n\r":
                    pos += 1
                if pos < len(text) or not more():
                    return text[pos : pos + 1], pos

        def value(pos: int) -> tuple[Any, int]:
            """The JSON value at `pos`; reads on while it may be cut off by the chunk's end."""
            while True:
                try:
                    parsed, end = decoder.raw_decode(text, pos)
                    if end < len(text) or at_end:
                        return parsed, end
                except json.JSONDecodeError as exc:
                    if at_end:
                        raise SceneFileError(
                            f"{scenes_file}: not valid JSON ({exc.msg} at line {exc.lineno})"
                        ) from None
                except RecursionError:
                    raise SceneFileError(
                        f"{scenes_file}: JSON nested too deeply to be a scenes file"
                    ) from None
                more()

        def expect(pos: int, allowed: str) -> tuple[str, int]:
            char, pos = next_char(pos)
            if not char or char not in allowed:
                raise SceneFileError(
                    f"{scenes_file}: not a valid JSON object (expected one of {allowed!r} "
                    f"at character {pos}, got {char!r})"
                )
            return char, pos

        char, pos = expect(0, "{")
        char, pos = expect(pos + 1, '"}')
        while char == '"':
            key, pos = value(pos)
            if key == "scenes":
                return None
            _, pos = expect(pos, ":")
            member, pos = value(next_char(pos + 1)[1])
            if key == "info":
                return member if isinstance(member, dict) else None
            char, pos = expect(pos, ",}")
            if char == ",":
                char, pos = expect(pos + 1, '"')
    return None


# --------------------------------------------------------------------------- agreement


def best_iou(attribution: np.ndarray, mask: np.ndarray) -> float:
    """Max over tokens of IoU(region of token, mask)."""
    best = 0.0
    for token in np.unique(attribution[mask]):
        region = attribution == token
        best = max(best, float((region & mask).sum() / (region | mask).sum()))
    return best
