"""The program generator (paper Sec. 2.1 "Program generator") and the shared transformer block.

    S = LayerNorm+Linear(F) + pos2d            source tokens, (P, d)
    Q = queries + prefix_pos                   L_max learned query tokens
    [S'; Z] = Encoder([S; Q], mask)            Z = raw program z_e, (L_max, d)

Mask: source tokens attend to source tokens only (so no query information leaks into them);
query i attends to every source token and to queries <= i.

Design decisions
- Two-stream attention instead of one masked attention ("split" layout, the default). The
  sequence is [memory; queries]. Memory rows attend only to memory: one unmasked
  `scaled_dot_product_attention` (SDPA) over the memory block. Query rows attend to everything
  before them: one SDPA with a *lower-right* causal bias (`torch.nn.attention.bias.
  causal_lower_right`), which is exactly "all memory plus queries <= i" and which SDPA runs in
  its fused kernels without a materialised mask. A single SDPA with a boolean (N, N) mask (the
  "masked" layout, kept as the reference and benchmark baseline) forces SDPA off flash
  attention onto kernels that read the mask, and also computes the masked-out
  memory-to-query block. FlexAttention block masks would be the other route on CUDA; the split
  layout needs no compilation and is identical on CPU, which is what the tests and the tiny
  preset run on.
- The same block serves the interpreter, whose memory is the program (with a per-sample key
  padding mask during training) and whose queries are the P grid queries (not causal).
- Fixed 2D sine-cosine patch positional encodings (MAE style: half the channels encode the
  row, half the column) rather than learned ones: they need no parameters tied to one grid
  size, and the learned alternative would only add P x d parameters that the paper's
  parameter budget (Table 6) does not show. The query side gets *learned* prefix positional
  encodings as the paper states (Table 5: "2D patch + learned prefix positional encoding").
- Pre-LayerNorm blocks with GELU FFN, no dropout: the targets are frozen features, not labels,
  and the bottleneck already regularises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

AttentionLayout = Literal["split", "masked"]
ATTENTION_LAYOUTS: tuple[str, ...] = get_args(AttentionLayout)


@dataclass(frozen=True)
class TransformerConfig:
    """The architecture the generator and the interpreter share (paper Table 6).

    Built by `ModelConfig.transformer`; constructed directly in tests.
    """

    d: int = 256
    """Token width d of both transformers."""
    layers: int = 8
    """Depth of the generator and, separately, of the interpreter."""
    heads: int = 8
    """Attention heads (d must be divisible by them)."""
    ffn: int = 1024
    """Hidden width of each block's FFN."""
    layout: AttentionLayout = "split"
    """Attention layout: "split" (fast, two SDPA calls) or "masked" (the reference)."""

    def __post_init__(self) -> None:
        if min(self.d, self.layers, self.heads, self.ffn) <= 0:
            raise ValueError(f"TransformerConfig: sizes must be positive, got {self}")
        if self.d % self.heads:
            raise ValueError(
                f"TransformerConfig: d={self.d} is not divisible by heads={self.heads}"
            )
        if self.layout not in ATTENTION_LAYOUTS:
            raise ValueError(
                f"TransformerConfig: attention layout {self.layout!r} is not one of {ATTENTION_LAYOUTS}"
            )


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positional encodings of a (rows, cols) grid: (rows*cols, dim)."""
    if dim % 4 != 0:
        raise ValueError(f"sincos_2d: width {dim} must be divisible by 4")
    rows, cols = grid
    quarter = dim // 4
    freqs = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    r, c = torch.meshgrid(
        torch.arange(rows, dtype=torch.float64),
        torch.arange(cols, dtype=torch.float64),
        indexing="ij",
    )
    angles_r = r.reshape(-1, 1) * freqs
    angles_c = c.reshape(-1, 1) * freqs
    enc = torch.cat([angles_r.sin(), angles_r.cos(), angles_c.sin(), angles_c.cos()], dim=1)
    return enc.float()


def reference_mask(
    n: int,
    n_mem: int,
    causal_queries: bool,
    mem_valid: torch.Tensor | None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """The full boolean attention mask (True = may attend) of the memory/query layout.

    Shape (1, 1, n, n), or (B, 1, n, n) when a per-sample memory validity (B, n_mem) is given.
    """
    idx = torch.arange(n, device=device)
    col_is_mem = idx < n_mem
    mask = col_is_mem.unsqueeze(0).expand(n, n).clone()  # every row sees memory
    # Query rows are rows n_mem.. (a slice, not a boolean index: no host sync on CUDA).
    if causal_queries:
        mask[n_mem:] |= idx.unsqueeze(0) <= idx[n_mem:].unsqueeze(1)
    else:
        mask[n_mem:] = True
    mask = mask.view(1, 1, n, n)
    if mem_valid is not None:
        key_ok = torch.cat(
            [mem_valid, torch.ones(mem_valid.shape[0], n - n_mem, dtype=torch.bool, device=device)],
            dim=1,
        )
        mask = mask & key_ok[:, None, None, :]
    return mask


def memory_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_mem: int,
    causal_queries: bool,
    mem_valid: torch.Tensor | None = None,
    layout: str = "split",
) -> torch.Tensor:
    """Attention over [memory; queries] with heads already split: q, k, v are (B, h, N, hd).

    Memory attends to (valid) memory; queries attend to (valid) memory and to queries, causally
    (query i sees queries <= i) when `causal_queries`.
    """
    n = q.shape[2]
    if layout == "masked":
        mask = reference_mask(n, n_mem, causal_queries, mem_valid, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if causal_queries and mem_valid is not None:
        raise ValueError(
            "memory_query_attention: causal queries with a memory padding mask is not a STROP layout"
        )
    mem_mask = None if mem_valid is None else mem_valid[:, None, None, :]
    out_mem = F.scaled_dot_product_attention(
        q[:, :, :n_mem], k[:, :, :n_mem], v[:, :, :n_mem], attn_mask=mem_mask
    )
    query_mask: torch.Tensor | None  # CausalBias is a Tensor subclass
    if causal_queries and q.is_cuda:
        query_mask = causal_lower_right(n - n_mem, n)
    elif causal_queries:
        # On CPU the bias object is materialised anyway; a plain mask also works under
        # TorchDispatchModes (FlopCounterMode), which cannot create the CausalBias subclass.
        query_mask = torch.ones(n - n_mem, n, dtype=torch.bool, device=q.device).tril(n_mem)
    elif mem_valid is not None:
        ones = torch.ones(mem_valid.shape[0], n - n_mem, dtype=torch.bool, device=q.device)
        query_mask = torch.cat([mem_valid, ones], dim=1)[:, None, None, :]
    else:
        query_mask = None
    out_query = F.scaled_dot_product_attention(q[:, :, n_mem:], k, v, attn_mask=query_mask)
    return torch.cat([out_mem, out_query], dim=2)


class Block(nn.Module):
    """Pre-LN transformer encoder layer over [memory; queries] with the memory/query mask."""

    def __init__(self, d: int, heads: int, ffn: int, layout: str = "split") -> None:
        super().__init__()
        if d % heads != 0:
            raise ValueError(f"Block: width {d} is not divisible by {heads} heads")
        if layout not in ATTENTION_LAYOUTS:
            raise ValueError(
                f"Block: attention layout {layout!r} is not one of {ATTENTION_LAYOUTS}"
            )
        self.heads = heads
        self.layout = layout
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(
        self,
        x: torch.Tensor,
        n_mem: int,
        causal_queries: bool,
        mem_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
        att = memory_query_attention(q, k, v, n_mem, causal_queries, mem_valid, self.layout)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Generator(nn.Module):
    """Teacher tokens (B, P, D) -> raw program z_e (B, L_max, d).

    Args:
        arch: width, depth, heads, FFN width and attention layout.
        teacher_dim: teacher width D.
        grid: (rows, cols) of the teacher's patch grid, P = rows * cols.
        l_max: number of program positions L_max.
    """

    pos_2d: torch.Tensor

    def __init__(
        self, arch: TransformerConfig, teacher_dim: int, grid: tuple[int, int], l_max: int
    ) -> None:
        super().__init__()
        d = arch.d
        self.l_max = l_max
        self.n_patches = grid[0] * grid[1]
        self.norm_in = nn.LayerNorm(teacher_dim)
        self.proj_in = nn.Linear(teacher_dim, d)
        self.register_buffer("pos_2d", sincos_2d(grid, d), persistent=False)
        self.queries = nn.Parameter(torch.randn(l_max, d) * 0.02)
        self.prefix_pos = nn.Parameter(torch.randn(l_max, d) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d, arch.heads, arch.ffn, arch.layout) for _ in range(arch.layers)
        )
        self.norm_out = nn.LayerNorm(d)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """LayerNorm + Linear of teacher tokens to width d, without positions: (B, P, d)."""
        return self.proj_in(self.norm_in(feats))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, p, _ = feats.shape
        if p != self.n_patches:
            raise ValueError(
                f"Generator: got {p} teacher tokens, the configured grid has {self.n_patches}"
            )
        src = self.project(feats) + self.pos_2d.to(feats.dtype)
        queries = (self.queries + self.prefix_pos).unsqueeze(0).expand(b, -1, -1)
        x = torch.cat([src, queries.to(src.dtype)], dim=1)
        for block in self.blocks:
            x = block(x, n_mem=p, causal_queries=True)
        return self.norm_out(x[:, p:])


def init_weights(module: nn.Module) -> None:
    """Truncated-normal Linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def attention_flops(n_query: int, n_key: int, d: int) -> int:
    """Matmul FLOPs of scores and weighted values for n_query rows over n_key keys."""
    return 2 * 2 * n_query * n_key * d


def block_flops(n_mem: int, n_query: int, d: int, ffn: int, causal_queries: bool) -> int:
    """Forward matmul FLOPs of one `Block` in the split layout (what is actually computed)."""
    n = n_mem + n_query
    linear = 2 * n * d * (3 * d + d + 2 * ffn)
    # Causal query rows touch on average half of the query keys; the fused kernel skips the rest.
    query_keys = n_mem + (n_query + 1) / 2 if causal_queries else n
    att = attention_flops(n_mem, n_mem, d) + int(
        math.ceil(attention_flops(n_query, 1, d) * query_keys)
    )
    return linear + att
