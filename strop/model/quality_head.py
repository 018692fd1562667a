"""The quality head (opt-in, `model.quality_head=true`; also called the eps-conditioned length
head): how long must this image's program be to reach alignment error EPS?

One vocabulary for the feature: the quality head (`QualityHead`, `Strop.quality_head`, config
`model.quality_head`) answers `--length-mode quality:EPS`; `strop.training.quality` trains it;
`strop.evaluation.quality_calibration` checks it (eval.json's `quality_control` block, a key
kept as written); the report's length-quality section (`strop.evaluation.report.length_quality`)
draws it.

    c(x) = MLP(mean_p(S_p))            (B, L_max - L_min + 1): predicted log error per length
    L(x, eps) = min {L : exp(c(x)_L) <= eps}, L_max when none is
                                       `--length-mode quality:EPS`, one forward pass

EPS is in the teacher's feature space: the per-sample alignment error
`strop.model.losses.align_error` (1 - cos + w_mse * mse), the quantity the phase-2 oracle
probes (paper Appendix A, eqs. 2-5) and `--length-mode search:EPS` thresholds. The head
answers, in one pass, the question the search answers with one interpreter pass per length:
the shortest prefix whose error is at most EPS. It does so by predicting the curve the search
measures and applying the search's own rule to it (`shortest_reaching`, shared by both).

Design decisions (ours; the paper has only the unconditioned head)
- The idea is KARL's (Duggal et al. 2025, "Single-pass Adaptive Image Tokenization for
  Minimum Program Search"): decide the length from a requested reconstruction quality (its
  `desired_reconstruction_quality`), learned from the qualities the model actually reached
  at given budgets. KARL does this in pixel space and lets the condition steer its encoder;
  here the condition only reads a head on the frozen, detached pooled features, so the
  tokenizer, the codebook and the unconditioned head train exactly as without it (the
  head's gradients reach nothing else).
- The head predicts the whole error curve, not one length for one drawn eps. Our first
  version drew eps per sample and regressed a length with a logistic in log eps (a
  two-parameter family per image). On a tiny run (`tests/test_eval_length_control.py`'s
  calibration run) its lengths missed the search's by 2.3 tokens per image and its achieved
  error barely moved with eps (Spearman 0.49 over 6 EPS values): the measured curves are a
  step at L_min followed by a noisy floor, which no smooth logistic in eps fits, and
  regression to one length averages the step away. Regressing the curve fits the search's
  targets at every eps at once (the target for any eps is the threshold of that curve), and
  thresholding the predicted curve is the search's rule exactly.
- Log errors: a curve spans a factor of 2-3 between L_min and its floor, and the thresholds
  users ask for are relative ("10% above the floor"); the loss is the mean squared log error
  over the lengths the oracle measured (`strop.training.quality`).
- A separate module beside the paper's `LengthHead`, built only when asked for: the default
  model has the same parameters, the same initialisation order and the same state_dict keys
  as before, and a conditioned run still answers `--length-mode head`.
- The same width and init as `LengthHead` (final bias 0: an untrained head predicts error 1
  at every length, so `quality:EPS` answers L_max for any EPS < 1 until it has learned).
- Lengths from the curve never grow with EPS (the shortest length reaching a larger EPS is
  never longer), whatever the curve's shape: no monotone constraint is needed.
"""

from __future__ import annotations

import torch
from torch import nn


class QualityHead(nn.Module):
    """Pooled projected teacher tokens (B, d) -> predicted log alignment error (B, n) at each
    prefix length L_min..L_max (n = L_max - L_min + 1)."""

    def __init__(self, d: int, l_min: int, l_max: int, hidden: int | None = None):
        super().__init__()
        if not 1 <= l_min <= l_max:
            raise ValueError(f"quality head: need 1 <= l_min <= l_max, got {l_min}, {l_max}")
        self.l_min, self.l_max = l_min, l_max
        hidden = hidden or d
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, self.n_lengths))

    @property
    def n_lengths(self) -> int:
        return self.l_max - self.l_min + 1

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled.detach()).float()

    def lengths(self, log_curve: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The shortest length whose predicted error is <= eps (B,) long (eps scalar or (B,))."""
        return shortest_reaching(log_curve.exp(), eps, self.l_min)


def shortest_reaching(errors: torch.Tensor, eps: torch.Tensor | float, l_min: int) -> torch.Tensor:
    """Per row of `errors` (B, n), errors[:, i] at prefix length l_min + i: the shortest length
    with error <= eps, the longest (l_min + n - 1) where none is. The rule of `search:EPS`."""
    eps_t = torch.as_tensor(eps, dtype=errors.dtype, device=errors.device)
    ok = errors <= (eps_t[:, None] if eps_t.ndim == 1 else eps_t)
    last = torch.full_like(ok[:, 0], errors.shape[1] - 1, dtype=torch.long)
    first = torch.where(ok.any(dim=1), ok.float().argmax(dim=1), last)
    return first + l_min
