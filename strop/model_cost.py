"""Analytic cost of a STROP model (paper Table 6): parameter counts, FLOPs, `strop model-info`.

Design decisions
- Parameter counts follow the paper's definition (Table 6): trainable = generator,
  interpreter, quantizer projections and length head; the pixel probe is counted separately;
  total = trainable + teacher.
- FLOPs are analytic matmul counts (2 per multiply-add) of one forward at the full L_max, in
  the split attention layout, excluding the teacher and the pixel probe;
  `Strop.flops_per_image(include_teacher=True)` adds the teacher forward. A test checks the
  count against `torch.utils.flop_counter.FlopCounterMode`.
- `describe` needs no weights: it builds the model on the meta device with a weightless
  stand-in teacher and counts the teacher from its architecture config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from strop.generator import block_flops
from strop.model_config import ModelConfig
from strop.teachers import count_teacher_parameters, teacher_flops

if TYPE_CHECKING:
    from strop.model import Strop

__all__ = ["count_parameters", "describe", "model_flops"]


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


def count_parameters(model: Strop) -> dict[str, int]:
    """Parameter counts by the paper's definition (Table 6).

    trainable: generator + interpreter + quantizer projections + length head;
    pixel_probe: the pixel decoder; teacher: the frozen teacher; total: trainable + teacher.
    """

    def n(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    trainable = (
        n(model.generator) + n(model.interpreter) + n(model.quantizer) + n(model.length_head)
    )
    teacher = n(model.teacher)
    return {
        "trainable_params": trainable,
        "pixel_probe_params": n(model.pixel_decoder),
        "teacher_params": teacher,
        "total_params": trainable + teacher,
    }


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """`strop model-info` numbers from the config alone: the model is built on the meta device
    with a weightless stand-in teacher and the teacher is counted from its architecture config."""
    # Imported here: strop.model imports this module for `Strop.flops_per_image`.
    from strop.model import Strop
    from strop.teachers import PixelTeacher

    class _ShapeOnlyTeacher(PixelTeacher):
        def __init__(self) -> None:
            super().__init__(cfg.patch_size)
            self.teacher_name = cfg.teacher
            self.dim = cfg.teacher_dim

    with torch.device("meta"):
        model = Strop(cfg, teacher=_ShapeOnlyTeacher())
    counts = count_parameters(model)
    counts["teacher_params"] = count_teacher_parameters(cfg.teacher, cfg.image_size, cfg.patch_size)
    counts["total_params"] = counts["trainable_params"] + counts["teacher_params"]
    teacher_cost = teacher_flops(cfg.teacher, cfg.image_size, cfg.patch_size)
    return {
        "preset": cfg.preset,
        "teacher": cfg.teacher,
        "d": cfg.d,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "ffn": cfg.ffn,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "n_patches": cfg.n_patches,
        "teacher_dim": cfg.teacher_dim,
        "k": cfg.k,
        "l_max": cfg.l_max,
        "code_dim": cfg.code_dim,
        **counts,
        "flops_per_image": model_flops(cfg),
        "teacher_flops_per_image": teacher_cost,
        "bits_per_program": cfg.bits_per_program,
    }
