"""The eps-conditioned length head (opt-in, `model.quality_head=true`): how long must this
image's program be to reach alignment error EPS?

    L_hat(x, eps) = L_max * sigmoid(a(x) - softplus(s(x)) * z),  z = (log eps - m) / s
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
- The condition is standardised: z = (log eps - m) / s, with m, s running statistics
  (buffers, BatchNorm-style momentum) of the log eps the trainer draws (`observe`). Reachable
  errors span a narrow band of log eps (0.3 to 0.45 on a tiny pixels run), so a raw log eps
  would need a slope the head takes thousands of steps to grow; standardised, a unit slope
  already moves the length across its range. Before any draw m = 0, s = 1.
- Monotone by construction: for each image, L_hat is a logistic in z with a positive
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

    log_eps_mean: torch.Tensor
    log_eps_std: torch.Tensor
    observed: torch.Tensor

    def __init__(self, d: int, l_max: int, hidden: int | None = None, momentum: float = 0.1):
        super().__init__()
        self.l_max, self.momentum = l_max, momentum
        hidden = hidden or d
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 2))
        self.register_buffer("log_eps_mean", torch.zeros(()))
        self.register_buffer("log_eps_std", torch.ones(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.long))

    def standardise(self, eps: torch.Tensor) -> torch.Tensor:
        """z = (log eps - m) / s, the head's view of a target error."""
        log_eps = eps.float().clamp_min(1e-12).log()
        return (log_eps - self.log_eps_mean) / self.log_eps_std

    @torch.no_grad()
    def observe(self, eps: torch.Tensor) -> None:
        """Fold a batch of drawn target errors into the running log-eps statistics."""
        log_eps = eps.detach().float().clamp_min(1e-12).log().to(self.log_eps_mean.device)
        if log_eps.numel() < 2:
            return
        mean, std = log_eps.mean(), log_eps.std().clamp_min(1e-3)
        keep = 0.0 if int(self.observed) == 0 else 1.0 - self.momentum
        self.log_eps_mean.mul_(keep).add_((1.0 - keep) * mean)
        self.log_eps_std.mul_(keep).add_((1.0 - keep) * std)
        self.observed += 1

    def forward(self, pooled: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        offset, slope = self.mlp(pooled.detach()).float().unbind(-1)
        z = self.standardise(eps.to(offset.device))
        return torch.sigmoid(offset - F.softplus(slope) * z) * self.l_max
