"""The optimiser and learning-rate schedule of a run.

Design decisions
- AdamW with three parameter groups: matrices (decayed), vectors (no weight decay), and last
  the length head (no weight decay, its own rate `train.lr * train.head_lr_mult`). Fused on
  CUDA.
- The schedule is warmup-hold-cosine down to `train.min_lr_ratio` of the peak, a multiplier
  driven by `LambdaLR` (one lambda per group). The length head keeps its peak rate
  (`train.head_constant_lr`): it first trains in phase 3, when the cosine has already started
  to decay, and a decayed rate leaves it regressing to the mean target instead of following
  the per-image targets.
- The opt-in eps-conditioned head (`model.quality_head`) is a fourth group, present only when
  the model has it (a default run's groups are as before): the same peak rate, cosine-decayed
  from the start of phase 3 (its first step) to the end of training. It regresses noisy
  per-image error curves whose spread at one length is a few percent; at a constant 1e-2 its
  outputs moved by that much every step (a quickstart-scale run's predicted curves sat 8%
  below the measured ones, in a pattern that changed with the step), and a decaying rate lets
  it settle on the mean curve instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from strop.model.network import Strop
from strop.training.config import RunConfig


def lr_factor(step: int, warmup: int, hold: int, total: int, floor: float) -> float:
    """Warmup-hold-cosine multiplier of the peak lr at (0-based) `step`."""
    if step < warmup:
        return (step + 1) / warmup
    if step < hold:
        return 1.0
    progress = min(1.0, (step - max(hold, warmup)) / max(1, total - max(hold, warmup)))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: Strop, cfg: RunConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; the length head(s) are the last group."""
    t = cfg.train
    quality_params = list(model.quality_head.parameters()) if model.quality_head else []
    quality = {id(p) for p in quality_params}
    head_params = [p for p in model.length_head_parameters() if id(p) not in quality]
    head = {id(p) for p in head_params} | quality
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        # Last group: the length head (see `lr_lambdas`).
        {"params": head_params, "weight_decay": 0.0,
         "lr": t.lr * t.head_lr_mult},
    ]  # fmt: skip
    if quality_params:  # the eps-conditioned head, opt-in (see `lr_lambdas`)
        groups.append({"params": quality_params, "weight_decay": 0.0, "lr": t.lr * t.head_lr_mult})
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, fused=fused)


def lr_lambdas(cfg: RunConfig, groups: int) -> list[Callable[[int], float]]:
    """Warmup-hold-cosine for the model's two groups; the length head keeps its peak; the
    eps-conditioned head, when there is a fourth group, decays from the start of phase 3."""
    t = cfg.train
    quality_start = cfg.curriculum.phase_steps[1]  # phase 3: the heads' first step

    def main(step: int) -> float:
        return lr_factor(step, t.warmup_steps, t.hold_steps, t.steps, t.min_lr_ratio)

    def head(step: int) -> float:
        return 1.0 if t.head_constant_lr else main(step)

    def quality(step: int) -> float:
        return lr_factor(step, 0, quality_start, t.steps, t.min_lr_ratio)

    lambdas: list[Callable[[int], float]] = [main, main, head]
    return [*lambdas, quality][:groups]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: RunConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambdas(cfg, len(optimizer.param_groups))
    )
