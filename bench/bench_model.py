"""Training-step speed of the STROP model: forward + backward images/s (issue 3, "Speed").

What is timed: one training step's model work on precomputed teacher features, i.e.
`generate` (generator + quantizer) -> `interpret_tokens` at random prefix lengths (masked,
static shapes) -> align + commitment + diversity losses -> backward. The frozen teacher and
the pixel probe are left out (the teacher is cached or cheap next to data loading; the probe is
optional), so the figure is the trainable model's own throughput.

Rows (each with a baseline measured in the same run):
- CPU, preset S, batch 32, fp32: the split attention layout (two SDPA calls, no materialised
  mask on the memory block) against the reference single-SDPA boolean-mask layout.
- CUDA when available: bf16 autocast split layout against the boolean-mask layout in bf16, and
  bf16 against fp32 (both split).
The ratio is value / baseline (> 1: faster than the baseline). Also reported: model FLOPs
utilisation is left to the trainer, which knows the device's peak.

`python -m bench.bench_model [--steps N] [--batch B] [--preset P]` prints the table.
"""

from __future__ import annotations

import argparse
import time

import torch

from strop.model import ModelConfig, build_model
from strop.model.interpreter import prefix_mask
from strop.model.losses import align_loss
from strop.model.teachers import PixelTeacher


class _ShapeTeacher(PixelTeacher):
    """A stand-in that only carries the teacher's width; features are random tensors here."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__(patch)
        self.dim = dim
        self.teacher_name = "bench"


def images_per_second(
    preset: str = "S",
    layout: str = "split",
    batch: int = 32,
    steps: int = 3,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
) -> float:
    """Median-free mean throughput of `steps` timed steps after one warm-up step."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, teacher="dinov3-s", attention=layout)
    model = (
        build_model(cfg, teacher=_ShapeTeacher(cfg.teacher_dim, cfg.patch_size)).to(device).train()
    )
    feats = torch.randn(batch, cfg.n_patches, cfg.teacher_dim, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        lengths = torch.randint(cfg.l_min, cfg.l_max + 1, (batch,), device=device)
        active = prefix_mask(lengths, cfg.l_max)
        with torch.autocast(
            device_type=torch.device(device).type,
            dtype=dtype or torch.float32,
            enabled=dtype is not None,
        ):
            gen = model.generate(feats)
            field = model.interpret_tokens(gen.tokens, lengths)
            q = model.quantizer_losses(gen, active)
            loss = (
                align_loss(field, feats, cfg.w_mse)
                + cfg.w_commit * q["commit_loss"]
                + cfg.w_div * q["diversity_loss"]
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_codebook(gen, active)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - start)


def _row(name: str, value: float, baseline: float) -> dict:
    return {
        "name": name,
        "value": round(value, 2),
        "unit": "img/s",
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 3),
    }


def run(steps: int = 3, batch: int = 32, preset: str = "S") -> list[dict]:
    """Rows {name, value, unit, baseline, ratio}; CUDA rows only when a GPU is present."""
    rows = []
    split = images_per_second(preset, "split", batch, steps)
    masked = images_per_second(preset, "masked", batch, steps)
    rows.append(_row(f"cpu {preset} b{batch} fwd+bwd split vs masked", split, masked))
    if torch.cuda.is_available():
        cuda_steps = max(steps, 20)
        bf16 = images_per_second(preset, "split", batch, cuda_steps, "cuda", torch.bfloat16)
        bf16_masked = images_per_second(preset, "masked", batch, cuda_steps, "cuda", torch.bfloat16)
        fp32 = images_per_second(preset, "split", batch, cuda_steps, "cuda", None)
        rows.append(_row(f"cuda {preset} b{batch} bf16 split vs masked", bf16, bf16_masked))
        rows.append(_row(f"cuda {preset} b{batch} bf16 vs fp32 (split)", bf16, fp32))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--preset", default="S")
    args = parser.parse_args()
    rows = run(args.steps, args.batch, args.preset)
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'unit':<6}  {'baseline':>9}  {'ratio':>6}")
    for r in rows:
        print(
            f"{r['name']:<{width}}  {r['value']:>10}  {r['unit']:<6}  {r['baseline']:>9}  {r['ratio']:>6}"
        )


if __name__ == "__main__":
    main()
