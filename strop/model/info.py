"""`strop model-info` from the config alone (paper Table 6): no weights, no teacher download.

Design decisions
- The model is built on the meta device with a weightless stand-in teacher (so no memory and
  no weights are needed, even for STROP-M on ViT-L), and the teacher is counted from its
  architecture config (`strop.model.teachers.count_teacher_parameters`).
"""

from __future__ import annotations

from typing import Any

import torch

from strop.model.config import ModelConfig
from strop.model.cost import count_parameters, model_flops
from strop.model.network import Strop
from strop.model.teachers import ShapeOnlyTeacher, count_teacher_parameters, teacher_flops

__all__ = ["describe"]


def describe(cfg: ModelConfig) -> dict[str, Any]:
    """`strop model-info` numbers from the config alone: the model is built on the meta device
    with a weightless stand-in teacher and the teacher is counted from its architecture config."""
    with torch.device("meta"):
        model = Strop(cfg, teacher=ShapeOnlyTeacher(cfg.teacher, cfg.patch_size))
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
