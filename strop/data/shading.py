"""Shading and compositing: lights, materials, ground, soft shadows, antialiasing.

Design decisions
- Shading: rubber is Lambert plus ambient; metal is a darker, tinted mirror of a two-tone
  environment (grey ground below, bright sky above) plus a sharp Blinn-Phong highlight, which
  gives CLEVR metal its contrast. The ground is grey with a soft radial falloff; soft shadows
  come from a capsule proxy per object (an approximation: a shadow's outline is not exact).
- Antialiasing: objects are ray cast at 2x2 supersampling (`supersample`) and box-filtered;
  the smooth ground and its shadows are shaded once at the output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from strop.data.camera import CAMERA, pixel_rays, set_pixel_coords
from strop.data.raycast import Solid, intersect, object_windows, pixel_windows, surface_normal
from strop.scenes import Scene

KEY_LIGHT = np.array([0.63, 0.23, 1.0]) / np.linalg.norm([0.63, 0.23, 1.0])
FILL_LIGHT = np.array([-0.7, -0.5, 0.6]) / np.linalg.norm([-0.7, -0.5, 0.6])
_KEY32 = KEY_LIGHT.astype(np.float32)
_LIGHTS = np.stack([KEY_LIGHT, FILL_LIGHT], axis=1).astype(np.float32)  # (3, 2)


@lru_cache(maxsize=8)
def _ground(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground colour (n, n, 3) with a soft radial falloff, and ground hit points (n, n, 2)."""
    d = pixel_rays(n).astype(np.float64)
    t = -CAMERA.pos[2] / np.minimum(d[..., 2], -1e-3)  # every ray of this camera hits the ground
    p = CAMERA.pos[:2] + t[..., None] * d[..., :2]
    r2 = ((p - np.array([-0.5, 0.5])) ** 2).sum(-1)
    shade = 0.36 + 0.26 * np.exp(-r2 / (2 * 5.5**2))
    rgb = shade[..., None] * np.array([1.0, 1.0, 1.02])
    return rgb.astype(np.float32), p.astype(np.float32)


def _shade(solid: Solid, d: np.ndarray, normal: np.ndarray) -> np.ndarray:
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


def _shadows(solids: Sequence[Solid], ground_xy: np.ndarray) -> np.ndarray:
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
    for k, (r0, r1, c0, c1) in enumerate(pixel_windows(corners, n)):
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
    solids = [Solid.from_object(o) for o in scene.objects]
    # The ground and its soft shadows are smooth: shade them at the output size. Only objects
    # are ray cast at the supersampled size, into a colour buffer that is zero off-object.
    ground_rgb, ground_xy = _ground(size)
    base = ground_rgb * (1 - 0.5 * _shadows(solids, ground_xy))[..., None]

    rays = pixel_rays(n)
    zbuf = np.full((n, n), np.inf, dtype=np.float32)
    ids = np.full((n, n), -1, dtype=np.int16)
    color = np.zeros((n, n, 3), dtype=np.float32)
    windows = object_windows(solids, n)
    for i, (solid, (r0, r1, c0, c1)) in enumerate(zip(solids, windows, strict=True)):
        if r0 >= r1 or c0 >= c1:
            continue
        d = rays[r0:r1, c0:c1]
        t = intersect(solid, d)
        near = t < zbuf[r0:r1, c0:c1]
        if not near.any():
            continue
        t_hit, d_hit = t[near], d[near]
        zbuf[r0:r1, c0:c1][near] = t_hit
        ids[r0:r1, c0:c1][near] = i
        color[r0:r1, c0:c1][near] = _shade(solid, d_hit, surface_normal(solid, d_hit, t_hit))

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
