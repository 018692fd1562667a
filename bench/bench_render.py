"""Renderer throughput: CLEVR-like scenes per second at 128 px, PNG writing included.

Rows (all measured in this run, in one process; `value` is wall-clock, so on a shared machine
read `img_per_cpu_s` too, the rate per CPU second of this process):
- `clevr-synth 128px`: `generate_dataset` end to end (sampling with CLEVR's rejection rules,
  ray casting at 2x2 supersampling, shading, shadows, PNG files, scenes JSON). Baseline: the
  cheapest drawing of the same scenes, flat discs with PIL `ImageDraw` in painter's order
  (no shading, no occlusion test, no antialiasing) written as PNG files. The ratio says what
  the shaded, depth-tested render costs against that floor.
- `render only 128px`: `render_scene` on pre-sampled scenes, no files. Baseline: the same
  without supersampling (`supersample=1`), i.e. the cost of antialiasing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from strop.data import camera, placement, raycast, shading
from strop.data import renderer as R

SIZE = 128


def _best_rate(fn, n: int, repeats: int = 3) -> float:
    """Items per wall-clock second of `fn()` (which handles n items), best of `repeats`."""
    return _best(fn, n, repeats, time.perf_counter)


def _best_cpu_rate(fn, n: int, repeats: int = 3) -> float:
    """Items per CPU second of this process: what one core does when others share the machine."""
    return _best(fn, n, repeats, time.process_time)


def _best(fn, n: int, repeats: int, clock) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return n / best


def _flat_disc_render(scene, size: int, path: Path) -> None:
    img = Image.new("RGB", (size, size), (110, 110, 110))
    draw = ImageDraw.Draw(img)
    for obj in sorted(scene.objects, key=lambda o: -o.pixel_coords[2]):
        u, v, depth = obj.pixel_coords
        r = obj.coords_3d[2] / (depth * camera.CAMERA.tan_x) * size / 2 * 1.2
        draw.ellipse((u - r, v - r, u + r, v + r), fill=raycast.COLOR_RGB[obj.color])
    img.save(path, format="PNG", compress_level=1)


def run(n: int = 200) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def generate() -> None:
            R.generate_dataset(out / "ours", n, SIZE, progress=False)

        ours = _best_rate(generate, n)
        ours_cpu = _best_cpu_rate(generate, n)
        scenes = [
            placement.sample_scene(np.random.default_rng([0, 0, i]), i, "train") for i in range(n)
        ]
        for s in scenes:
            camera.set_pixel_coords(s, SIZE)
        (out / "flat").mkdir()

        def flat() -> None:
            for s in scenes:
                _flat_disc_render(s, SIZE, out / "flat" / s.image_filename)

        base = _best_rate(flat, n)
        rows.append(
            {
                "name": f"clevr-synth {SIZE}px (sample+render+png)",
                "value": round(ours, 1),
                "unit": "img/s",
                "baseline": round(base, 1),
                "baseline_name": "PIL ImageDraw flat discs + png",
                "ratio": round(ours / base, 3),
                "img_per_cpu_s": round(ours_cpu, 1),
            }
        )
    render = _best_rate(lambda: [shading.render_scene(s, SIZE) for s in scenes], n)
    no_aa = _best_rate(lambda: [shading.render_layers(s, SIZE, supersample=1) for s in scenes], n)
    rows.append(
        {
            "name": f"render only {SIZE}px (2x2 supersampled)",
            "value": round(render, 1),
            "unit": "img/s",
            "baseline": round(no_aa, 1),
            "baseline_name": "same renderer, supersample=1",
            "ratio": round(render / no_aa, 3),
        }
    )
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
