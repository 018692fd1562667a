"""Length control: `--length-mode quality:EPS` (one pass) vs `search:EPS` (every length).

What is timed: deciding each image's length from teacher features and interpreting the
program at that length, per image, as eval.json's `quality_control` block times it (the same
function, `strop.evaluation.quality_calibration`): the quality head plus one interpreter
pass against the interpreter at all L_max - L_min + 1 prefix lengths. The teacher and the
generator, which both modes share, are left out. Weights are untrained (the cost does not
depend on them); features are random tensors of the teacher's shape.

Row: value = quality:EPS ms per image, baseline = search:EPS ms per image, ratio = baseline /
value (how many times faster the one-pass head is). `--quick`: the tiny preset (L_max 16);
otherwise STROP-S (L_max 64) at batch 8.

`python -m bench.bench_length [--quick]` prints the row.
"""

from __future__ import annotations

import argparse

import torch

from strop.evaluation.quality_calibration import quality_calibration
from strop.model import ModelConfig, build_model
from strop.model.teachers import PixelTeacher


class _ShapeTeacher(PixelTeacher):
    """A stand-in that only carries the teacher's width; features are random tensors here."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__(patch)
        self.dim = dim
        self.teacher_name = "bench"


def run(quick: bool = False) -> list[dict]:
    preset, batch = ("tiny", 16) if quick else ("S", 8)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, teacher="dinov3-s", quality_head=True)
    model = build_model(cfg, teacher=_ShapeTeacher(cfg.teacher_dim, cfg.patch_size)).eval()
    feats = torch.randn(batch, cfg.n_patches, cfg.teacher_dim)
    with torch.no_grad():
        tokens = model.generate(feats).tokens
    block = quality_calibration(model, [(feats, tokens)], cfg.w_mse, eps_values=[0.5, 1.0])
    quality_ms = 1000 * block["quality_seconds_per_image"]
    search_ms = 1000 * block["search_seconds_per_image"]
    return [
        {
            "name": f"quality:EPS length + interpret, {preset} (L_max {cfg.l_max}), batch {batch}, "
            f"vs search:EPS over {block['search_passes']} lengths",
            "value": round(quality_ms, 3),
            "unit": "ms/img",
            "baseline": round(search_ms, 3),
            "ratio": round(search_ms / quality_ms, 1),
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(row)


if __name__ == "__main__":
    main()
