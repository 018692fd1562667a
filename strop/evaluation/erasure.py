"""Counterfactual erasure and pair synergy (paper Sec. 4 "Program structure", App. D).

For one program with length L:

- counterfactual erasure: `E_j(p) = || F_hat(full) - F_hat(program without token j) ||_2` for
  every active token j and patch p;
- pair synergy `S_jk(p) = E_jk(p) - E_j(p) - E_k(p)` for adjacent active pairs, random
  non-adjacent active pairs, and inactive controls (an active token paired with one past the
  prefix: S is 0 by construction, a check that erasure of inactive tokens is exact).

Design decisions
- "Deleting" token j removes it and re-packs the rest: the remaining tokens keep their order,
  the ones after j move up one prefix position (the interpreter adds prefix positional
  encodings, so this is the program with j cut out, not a masked hole), and the prefix length
  drops by one. It is done as a permutation of the L_max tokens (erased ones moved past the new
  length), so every variant of one image runs in one batched `interpret_tokens` call with
  static shape. Erasing a token at or past L leaves the prefix untouched: E_j = 0 exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from strop.model import Strop


def erasure_order(l_max: int, length: int, erase: tuple[int, ...]) -> tuple[list[int], int]:
    """Token order with `erase` removed from the program (moved past the end) and the new length."""
    dropped = set(erase)
    keep = [i for i in range(l_max) if i not in dropped]
    return keep + sorted(dropped), length - sum(1 for j in dropped if j < length)


def erased_fields(
    model: Strop,
    tokens: torch.Tensor,
    length: int,
    erasures: list[tuple[int, ...]],
    chunk: int = 128,
) -> torch.Tensor:
    """Interpreted fields (n, P, D) of one program (tokens (L_max, d)) after each erasure set."""
    import torch

    l_max = tokens.shape[0]
    outs = []
    for start in range(0, len(erasures), chunk):
        part = [erasure_order(l_max, length, e) for e in erasures[start : start + chunk]]
        order = torch.tensor([o for o, _ in part], device=tokens.device)
        lengths = torch.tensor([n for _, n in part], device=tokens.device)
        with torch.no_grad():
            outs.append(model.interpret_tokens(tokens[order], lengths))
    return torch.cat(outs)


def erasure_maps(
    model: Strop, tokens: torch.Tensor, length: int, erasures: list[tuple[int, ...]]
) -> np.ndarray:
    """`E(p) = || F_hat(full) - F_hat(erased) ||` per erasure set: (n, P)."""
    import torch

    with torch.no_grad():
        full = model.interpret_tokens(tokens[None], torch.tensor([length], device=tokens.device))
        fields = erased_fields(model, tokens, length, erasures)
        return (fields - full).float().norm(dim=-1).cpu().numpy()


def pair_synergy(
    e_pair: np.ndarray, e_single: np.ndarray, pairs: list[tuple[int, int]]
) -> np.ndarray:
    """`S_jk(p) = E_jk(p) - E_j(p) - E_k(p)`; e_single indexed by token (zeros past the prefix)."""
    return (
        np.stack([e_pair[i] - e_single[j] - e_single[k] for i, (j, k) in enumerate(pairs)])
        if pairs
        else np.zeros((0, e_single.shape[1]))
    )


def choose_pairs(
    length: int, l_max: int, n_random: int, rng: np.random.Generator
) -> dict[str, list[tuple[int, int]]]:
    """Adjacent active pairs; distinct random non-adjacent active pairs; active-inactive controls.

    Random pairs exclude adjacent ones so the two groups are disjoint: the comparison asks
    whether neighbouring tokens interact more than tokens further apart.
    """
    adjacent = [(j, j + 1) for j in range(length - 1)]
    far = [(j, k) for j in range(length) for k in range(j + 2, length)]
    pick: np.ndarray | list[int] = (
        rng.choice(len(far), min(n_random, len(far)), replace=False) if far else []
    )
    random = [far[i] for i in sorted(pick)]
    inactive: list[tuple[int, int]] = []
    if 0 < length < l_max:
        ks = rng.choice(np.arange(length, l_max), min(8, l_max - length), replace=False)
        inactive = [(int(rng.integers(length)), int(k)) for k in ks]
    return {"adjacent": adjacent, "random": random, "inactive": inactive}
