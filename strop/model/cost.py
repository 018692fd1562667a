"""Analytic cost of a STROP model (paper Table 6): parameter counts and FLOPs.

Design decisions
- Parameter counts follow the paper's definition (Table 6): trainable = generator,
  interpreter, quantizer projections and length head; the pixel probe is counted separately;
  total = trainable + teacher.
- FLOPs are analytic matmul counts (2 per multiply-add) of one forward at the full L_max, in
  the split attention layout, excluding the teacher and the pixel probe;
  `Strop.flops_per_image(include_teacher=True)` adds the teacher forward. A test checks the
  count against `torch.utils.flop_counter.FlopCounterMode`.
- `count_parameters` reads the model's named parts (`generator`, `interpreter`, `quantizer`,
  `length_head`, `pixel_decoder`, `teacher`) from any `nn.Module`, so this module never imports
  the network (which imports it for `Strop.flops_per_image`). `strop.model.info.describe`
  builds the weightless model for `strop model-info`.
"""

from __future__ import annotations

from torch import nn

from strop.model.config import ModelConfig
from strop.model.generator import block_flops

__all__ = ["count_parameters", "model_flops"]


def model_flops(cfg: ModelConfig, dim: int | None = None) -> int:
    """Forward matmul FLOPs per image of generator, quantizer, length head and interpreter."""
    dim = dim or cfg.teacher_dim
    p, n_q, d = cfg.n_patches, cfg.l_max, cfg.d
    project = 2 * p * dim * d
    generator = project + cfg.layers * block_flops(p, n_q, d, cfg.ffn, causal_queries=True)
    quantizer = 2 * n_q * (d * cfg.code_dim + cfg.code_dim * cfg.k + cfg.code_dim * d)
    length_head = project + 2 * (d * d + d)
    interpreter = (
        cfg.layers * block_flops(n_q, p, d, cfg.ffn, causal_queries=False) + 2 * p * d * dim
    )
    return int(generator + quantizer + length_head + interpreter)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts by the paper's definition (Table 6).

    trainable: generator + interpreter + quantizer projections + length head(s);
    pixel_probe: the pixel decoder; teacher: the frozen teacher; total: trainable + teacher.
    """

    def n(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    part = model.get_submodule
    trainable = sum(
        n(part(name)) for name in ("generator", "interpreter", "quantizer", "length_head")
    )
    # The opt-in eps-conditioned head (`strop.model.quality_head`) is trainable too.
    quality = getattr(model, "quality_head", None)
    trainable += n(quality) if isinstance(quality, nn.Module) else 0
    # The teacher is held outside the module tree (see `strop.model.network`).
    held = model.teacher
    if not isinstance(held, nn.Module):
        raise TypeError(f"count_parameters: {type(model).__name__} holds no teacher module")
    teacher = n(held)
    return {
        "trainable_params": trainable,
        "pixel_probe_params": n(part("pixel_decoder")),
        "teacher_params": teacher,
        "total_params": trainable + teacher,
    }
