"""The length head (paper Sec. 2.1 "Length head"): how long should this image's program be?

    L_hat = L_max * sigmoid(MLP(mean_p(S_p)))     S: projected teacher tokens, detached
    L = clip(round(L_hat), L_min, L_max)          at inference: hard truncation, no sampling

Design decisions
- Input: the generator's LayerNorm+Linear projection of the teacher tokens, mean-pooled over
  patches and detached (`docs/METHOD.md`), so the length loss never moves the generator.
- A two-layer MLP of width d (GELU): the paper calls it lightweight; at d = 256 it is 66k
  parameters, about 0.5% of STROP-S.
- The final bias starts at 0, so an untrained head predicts L_max / 2: a neutral start for
  phase 3 whatever the oracle's targets are.
- `round_lengths` is the one place that turns `L_hat` into integer lengths, used by encode,
  export and the curriculum's phase 4 alike.
"""

from __future__ import annotations

import torch
from torch import nn


class LengthHead(nn.Module):
    """Mean-pooled projected teacher tokens (B, d) -> L_hat (B,) in (0, L_max)."""

    def __init__(self, d: int, l_max: int, hidden: int | None = None) -> None:
        super().__init__()
        self.l_max = l_max
        hidden = hidden or d
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(pooled.detach()).squeeze(-1).float()) * self.l_max


def round_lengths(l_hat: torch.Tensor, l_min: int, l_max: int) -> torch.Tensor:
    """Integer program lengths: `clip(round(L_hat), L_min, L_max)` as long (B,)."""
    return l_hat.detach().round().clamp(l_min, l_max).long()
