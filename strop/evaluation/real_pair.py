"""A real CLEVR image beside our render of the same scene, both as the loaders feed them.

    python -m strop.evaluation.real_pair tests/fixtures/clevr_real CLEVR_train_000005 docs/real_vs_synthetic.png

Left: the real 480 x 320 image resized to S x S (`strop.data.datasets.load_image`); right: our
renderer's S x S image of that image's scene (same `3d_coords`, colours, shapes, materials,
sizes and rotations). Crosses mark the scene's `pixel_coords`, rescaled from 480 x 320 on the
left and recomputed by our camera on the right; if the frame or the frustum were wrong they
would sit off the objects.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from strop.data.datasets import find_clevr_root, load_image
from strop.data.renderer import write_png
from strop.data.shading import render_scene
from strop.evaluation.object_masks import pixel_frame
from strop.scenes import Scene, load_scenes


def pair_image(root: Path, split: str, scene: Scene, size: int = 256, gap: int = 8) -> np.ndarray:
    """(S, 2S + gap, 3) uint8: the real image (loader view) and our render, pixel_coords marked."""
    base = find_clevr_root(root)
    if base is None:
        raise FileNotFoundError(f"{root}: not a CLEVR folder (no images/ inside)")
    real = load_image(base / "images" / split / scene.image_filename, size, where=str(root))
    left = (real.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    frame = pixel_frame(base, split, scene)
    real_uv = [
        (o.pixel_coords[0] * size / frame[0], o.pixel_coords[1] * size / frame[1])
        for o in scene.objects
        if o.pixel_coords is not None
    ]
    ours = scene.model_copy(deep=True)
    right = render_scene(ours, size)
    ours_uv = [(o.pixel_coords[0], o.pixel_coords[1]) for o in ours.objects if o.pixel_coords]
    for image, points in ((left, real_uv), (right, ours_uv)):
        for u, v in points:
            _cross(image, u, v)
    spacer = np.full((size, gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def _cross(image: np.ndarray, u: float, v: float, arm: int = 4) -> None:
    h, w, _ = image.shape
    x, y = int(round(u)), int(round(v))
    for dx in range(-arm, arm + 1):
        if 0 <= x + dx < w and 0 <= y < h:
            image[y, x + dx] = (255, 0, 255)
    for dy in range(-arm, arm + 1):
        if 0 <= x < w and 0 <= y + dy < h:
            image[y + dy, x] = (255, 0, 255)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a real CLEVR folder (CLEVR_v1.0/ or above it)")
    parser.add_argument("image_id", help="e.g. CLEVR_train_000005")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    base = find_clevr_root(args.root)
    if base is None:
        parser.error(f"{args.root}: not a CLEVR folder (no images/ inside)")
    _, scenes = load_scenes(base / "scenes" / f"CLEVR_{args.split}_scenes.json")
    match = [s for s in scenes if s.image_filename.removesuffix(".png") == args.image_id]
    if not match:
        parser.error(f"{args.image_id}: no such image in the {args.split} scenes of {base}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_png(args.out, pair_image(base, args.split, match[0], args.size))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
