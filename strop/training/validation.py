"""Validation during training: alignment (cos, R^2), codebook usage (CB%) and the mean length
of the validation split's first batches, with the lengths the curriculum uses at that step
(the length head's from phase 4, else L_max)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from strop.model.config import ModelConfig
from strop.model.interpreter import prefix_mask
from strop.model.network import Strop


@torch.no_grad()
def validate_split(
    model: Strop,
    m: ModelConfig,
    batches: Iterable[dict[str, Any]],
    max_batches: int,
    features: Callable[[dict[str, Any]], torch.Tensor],
    use_head: bool,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> dict[str, float]:
    """`val_cos`, `val_r2`, `val_cb` and `val_length` over the first `max_batches` batches;
    `features(batch)` gives a batch's teacher features. The model is back in train mode after."""
    from strop.metrics import FieldStats, code_counts, codebook_usage
    from strop.model.length_head import round_lengths

    stats, counts, lengths_seen = FieldStats(), np.zeros(m.k, dtype=np.int64), []
    model.eval()
    try:
        for i, batch in enumerate(batches):
            if i >= max_batches:
                break
            feats = features(batch)
            with autocast():
                gen = model.generate(feats)
                if use_head:
                    lengths = round_lengths(model.predict_length(feats), m.l_min, m.l_max)
                else:
                    lengths = torch.full((feats.shape[0],), m.l_max, device=feats.device)
                field = model.interpret_tokens(gen.tokens, lengths)
            stats.update(field.float().cpu().numpy(), feats.float().cpu().numpy())
            codes = gen.codes.masked_fill(~prefix_mask(lengths, m.l_max), -1)
            counts += code_counts(codes.cpu().numpy(), m.k)
            lengths_seen.append(lengths.float().cpu())
    finally:
        model.train()
    return {
        "val_cos": stats.cos,
        "val_r2": stats.r2,
        "val_cb": codebook_usage(counts)["cb_pct"],
        "val_length": float(torch.cat(lengths_seen).mean()),
    }
