"""One batch of images through a trained run: teacher features, the generator's tokens, and
each image's program under a `--length-mode` (`encode_batch`), the step every evaluation
command (`export`, `eval`, `sweep`, `analyze`, the probes) runs per batch.

Design decisions
- The teacher and the generator run once per batch; their outputs serve the codes, the
  search and the evaluation alike. The length of each program comes from
  `strop.model.length_modes.program_lengths`, the one dispatch over the modes
  (`Strop.encode_features` uses it too), so an export and `Strop.encode` agree.
- The head's lengths are always computed (eval's `head_matches_search` compares them with the
  search's); `Strop.head_lengths` owns the inference rule clip(round(L_hat), L_min, L_max).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from strop.model.length_modes import LengthMode, program_lengths

if TYPE_CHECKING:
    import torch

    from strop.model.network import Strop


@dataclass
class EncodedBatch:
    """One batch through teacher and generator; `codes` is (B, L_max) padded with -1."""

    feats: torch.Tensor
    tokens: torch.Tensor
    codes: torch.Tensor
    lengths: torch.Tensor
    head_lengths: torch.Tensor | None = None
    search_errors: torch.Tensor | None = None


def pad_codes(codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Codes with positions >= length set to -1."""
    import torch

    pos = torch.arange(codes.shape[1], device=codes.device).unsqueeze(0)
    return torch.where(pos < lengths.unsqueeze(1), codes, torch.full_like(codes, -1))


def encode_batch(
    model: Strop, images: torch.Tensor, mode: LengthMode, w_mse: float, l_min: int
) -> EncodedBatch:
    """Teacher features, generator output and each image's program under `mode` (`w_mse`,
    `l_min`: the search's error weight and shortest length)."""
    import torch

    with torch.no_grad():
        feats = model.teacher_features(images)
        gen = model.generate(feats)
        head = model.head_lengths(feats).long()
        lengths, errors = program_lengths(model, feats, gen.tokens, mode, head, w_mse, l_min)
    return EncodedBatch(feats, gen.tokens, pad_codes(gen.codes, lengths), lengths, head, errors)
