"""The interpreter (paper Sec. 2.1 "Interpreter"): a program prefix -> the patch-feature field.

    M = tokens[:L] + prefix_pos[:L]            the program as key/value memory
    [M'; G'] = Encoder([M; G], mask)          G: P learned grid queries
    F_hat = Linear(LayerNorm(G'))              1x1 conv to the teacher width D, (P, D)

Design decisions
- It mirrors the generator (same block, width, depth, heads, FFN), with the roles swapped:
  the program is the memory stream (it attends only to itself) and the P grid queries read it
  and each other. This is an encoder-only transformer like the generator, which is what the
  paper's parameter budget (Table 6) implies: no separate cross-attention weights.
- Training passes all L_max tokens with a per-sample key-padding mask (`prefix_mask`), so
  shapes stay static for `torch.compile`; inference passes only the prefix, with no mask at
  all. Padded positions are never keys of a valid row, so whatever they hold cannot reach the
  output: the masked result is bit-identical under any padding and equal (to float rounding)
  to running the prefix alone. Tests check both.
- Program tokens get learned prefix positional encodings here too: the generator writes a
  causally ordered sequence, and without positions the interpreter would read it as a set.
- The "1x1 convolution" to width D is a Linear over the grid tokens (the same map), and the
  output stays (B, P, D) token-major like the teacher features it is compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from strop.model.generator import Block, TransformerConfig


def prefix_mask(lengths: torch.Tensor, l_max: int) -> torch.Tensor:
    """(B, l_max) bool, True at positions < lengths: the active prefix of each program."""
    return torch.arange(l_max, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class Interpreter(nn.Module):
    """Program tokens (B, L, d) with L <= L_max -> interpreted field (B, P, D).

    Args:
        arch: width, depth, heads, FFN width and attention layout (the generator's).
        n_patches: number of grid queries P (the teacher's patch count).
        teacher_dim: output width D.
        l_max: longest program.
    """

    def __init__(
        self, arch: TransformerConfig, n_patches: int, teacher_dim: int, l_max: int
    ) -> None:
        super().__init__()
        d = arch.d
        self.l_max = l_max
        self.prefix_pos = nn.Parameter(torch.randn(l_max, d) * 0.02)
        self.grid_queries = nn.Parameter(torch.randn(n_patches, d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, arch.heads, arch.ffn, arch.layout) for _ in range(arch.layers)
        )
        self.norm_out = nn.LayerNorm(d)
        self.proj_out = nn.Linear(d, teacher_dim)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths=None`: every passed token is valid (the inference path, prefix only)."""
        b, n_mem, _ = tokens.shape
        if n_mem > self.l_max:
            raise ValueError(f"Interpreter: program of {n_mem} tokens exceeds L_max={self.l_max}")
        mem_valid = None if lengths is None else prefix_mask(lengths, n_mem)
        memory = tokens + self.prefix_pos[:n_mem].to(tokens.dtype)
        grid = self.grid_queries.unsqueeze(0).expand(b, -1, -1).to(tokens.dtype)
        x = torch.cat([memory, grid], dim=1)
        for block in self.blocks:
            x = block(x, n_mem=n_mem, causal_queries=False, mem_valid=mem_valid)
        return self.proj_out(self.norm_out(x[:, n_mem:]))
