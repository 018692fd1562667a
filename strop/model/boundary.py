"""Checks where the inference API meets the outside world: images going into `Strop.encode`
and programs coming out of it.

Design decisions
- Images are float tensors in [0, 1] (what `strop.data.datasets.load_image` makes). Integer
  images (uint8) and floats outside [0, 1] (0-255 floats, a resampled image's overshoot) are
  refused with the dtype or the range seen, not scaled: guessing a scale would give another
  image's codes without a word. NaN and infinite pixels are refused too (a NaN spreads
  through the teacher and every code comes out the same).
- Programs leave the model only if every activation was finite and every length lies in
  [L_min, L_max] and every active code in [0, K): weights that are finite but too large for
  float32 arithmetic (scaled by 1e30, say) make NaN activations, which `round().long()`
  turned into lengths of -2^63 and codes of -1. A ValueError names the image and what was
  out of range.
- The checks run at inference only (`encode`, `encode_features`, `head_lengths`); the
  training step never pays for the device synchronisation they cost.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_finite_rows", "check_images", "check_programs"]


def _first_bad_row(bad: torch.Tensor) -> int:
    return int(bad.nonzero()[0]) if bad.ndim else 0


def check_images(images: Any, size: int) -> None:
    """Refuse anything but float images in [0, 1] without NaN or infinite values."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images: expected a float tensor (B, 3, {size}, {size}) in [0, 1], "
            f"got {type(images).__name__}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images: expected floats in [0, 1], got {str(images.dtype).removeprefix('torch.')} "
            "(divide 8-bit images by 255)"
        )
    if images.numel() == 0:
        return
    check_finite_rows(images, "images: image")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        hint = "scale 0-255 images by 1/255" if high > 2.0 else "clamp a resampled image to [0, 1]"
        raise ValueError(
            f"images: values must lie in [0, 1], got values in [{low:.4g}, {high:.4g}] ({hint})"
        )


def check_finite_rows(values: torch.Tensor, what: str, why: str = "") -> None:
    """Refuse NaN or infinite values, naming the first row (`what` N holds ...`why`)."""
    finite = torch.isfinite(values)
    rows = finite.flatten(1).all(1) if values.ndim > 1 else finite
    if not bool(rows.all()):
        raise ValueError(f"{what} {_first_bad_row(~rows)} holds NaN or infinite values{why}")


def check_programs(
    codes: torch.Tensor, lengths: torch.Tensor, z_e: torch.Tensor, l_min: int, l_max: int, k: int
) -> None:
    """Refuse programs that no trained tokenizer makes: non-finite activations, a length
    outside [l_min, l_max], or an active code outside [0, k). `codes` are padded with -1
    past each length; `z_e` (B, L_max, d_c) are the pre-quantisation vectors."""
    finite = torch.isfinite(z_e).flatten(1).all(1)
    if not bool(finite.all()):
        raise ValueError(
            f"image {_first_bad_row(~finite)}: the model's activations are not finite (NaN or "
            "infinite inside the generator); its weights overflow float32, which a trained "
            "tokenizer's never do"
        )
    bad = (lengths < l_min) | (lengths > l_max)
    if bool(bad.any()):
        i = _first_bad_row(bad)
        raise ValueError(
            f"image {i}: the model gave length {int(lengths[i])}, outside "
            f"[L_min, L_max] = [{l_min}, {l_max}]"
        )
    active = torch.arange(codes.shape[1], device=codes.device) < lengths.unsqueeze(1)
    bad_codes = active & ((codes < 0) | (codes >= k))
    if bool(bad_codes.any()):
        i, j = (int(v) for v in bad_codes.nonzero()[0])
        raise ValueError(
            f"image {i}: the model gave code {int(codes[i, j])} at position {j}, outside "
            f"[0, K) = [0, {k})"
        )
