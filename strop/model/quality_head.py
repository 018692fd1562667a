"""The eps-conditioned length head (opt-in, `model.quality_head=true`): how long must this
image's program be to reach alignment error EPS?

    L_hat(x, eps) = L_max * sigmoid(a(x) - softplus(s(x)) * log eps)
    (a, s) = MLP(mean_p(S_p))          S: projected teacher tokens, detached
    L = clip(round(L_hat), L_min, L_max)         `--length-mode quality:EPS`, one forward pass

EPS is in the teacher's feature space: the per-sample alignment error
`strop.model.losses.align_error` (1 - cos + w_mse * mse), the quantity the phase-2 oracle
probes (paper Appendix A, eqs. 2-5) and `--length-mode search:EPS` thresholds. The head
answers, in one pass, the question the search answers with one interpreter pass per length:
the shortest prefix whose error is at most EPS.

Design decisions (ours; the paper has only the unconditioned head)
- The idea is KARL's (Duggal et al. 2025, "Single-pass Adaptive Image Tokenization for
  Minimum Program Search"): condition the length decision on a requested reconstruction
  quality (its `desired_reconstruction_quality`) and learn it from the qualities the model
  actually reached at given budgets. KARL does this in pixel space and lets the condition
  steer its encoder; here the condition only steers a head on the frozen, detached pooled
  features, so the tokenizer, the codebook and the unconditioned head train exactly as without
  it (the head's gradients reach nothing else).
- A separate module beside the paper's `LengthHead`, built only when asked for: the default
  model has the same parameters, the same initialisation order and the same state_dict keys
  as before, and a conditioned run still answers `--length-mode head`.
- Monotone by construction: for each image, L_hat is a logistic in log eps with a positive
  slope (softplus), so a larger tolerated error can never ask for a longer program. The
  per-image inverse rate-distortion curve is thus a two-parameter family (offset a(x),
  steepness s(x)); power-law curves e(L) ~ c L^-alpha are logistic-like in log eps between
  the clamps at 0 and L_max, which is the regime the head serves.
- The same width and init as `LengthHead` (final bias 0: an untrained head predicts
  L_max / 2 at eps = 1, and softplus(0) ~ 0.69 makes it fall with eps from the start).
- Targets, the eps draw and the error-curve bank that feeds them are training concerns and
  live in `strop.training.quality`; the loss is eq. 6's MSE (`strop.model.losses.length_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QualityLengthHead(nn.Module):
    """Pooled projected teacher tokens (B, d) and target errors eps (B,) -> L_hat (B,)."""

    def __init__(self, d: int, l_max: int, hidden: int | None = None) -> None:
        super().__init__()
        self.l_max = l_max
        hidden = hidden or d
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, pooled: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        offset, slope = self.mlp(pooled.detach()).float().unbind(-1)
        log_eps = eps.to(offset).clamp_min(1e-12).log()
        return torch.sigmoid(offset - F.softplus(slope) * log_eps) * self.l_max
