"""The vector quantizer of the program (paper Sec. 2.1 "Vector quantization", "Codebook design").

    z_e = normalize(W_in x)            Linear d -> d_c, then l2-normalise
    code = argmin_k || z_e - c_k ||    over K unit codes (= argmax of the cosine)
    tokens = W_out (z_q + z_e - sg(z_e))   straight-through, Linear d_c -> d

Design decisions
- Our own small module rather than `vector_quantize_pytorch.VectorQuantize`. The library does
  the EMA update, the dead-code expiry and the loss inside `forward` whenever the module is in
  training mode, all in one call. STROP needs those steps apart: the codebook may only be
  updated from the *active prefix* that the curriculum picks after the forward, restarts must
  stay outside the compiled region (`torch.compile` would otherwise recompile on their
  data-dependent shapes), and the diversity term here is a KL of tempered soft assignments that
  the library does not provide. The library is pinned as a test-only oracle instead: a test
  checks our nearest codes and EMA codebook against its `Codebook(use_cosine_sim=True)`, whose
  EMA algebra (cluster sizes and sums start at 1 and at the codes, `lerp` by 1 - decay, Laplace
  smoothing with eps, re-normalise) we follow exactly.
- Straight-through in the form `z_q + (z_e - sg(z_e))`: its forward value is exactly `z_q`, so
  tokens computed in training equal the tokens `embed_codes` rebuilds from stored codes, bit for
  bit (the textbook `z_e + sg(z_q - z_e)` differs from `z_q` by rounding).
- fp32 everywhere inside: the projection to code space and the distances run with autocast
  disabled, because bf16 cosine similarities between unit vectors tie and flip assignments.
- Codebook state is three buffers (codes, EMA cluster sizes, EMA sums), not parameters: no
  optimiser touches them and they are not counted as trainable parameters (paper Table 6
  counts the quantizer projections only). They are in `state_dict`, so a resumed run continues
  the same codebook.
- DDP: counts and sums are all-reduced (sum) before the EMA step, so every rank holds the same
  codebook. Restarts draw replacement vectors on rank 0 and broadcast them; the dead-code mask
  is computed from the all-reduced statistics and is therefore identical on every rank.
- Re-seeded codes get their EMA statistics reset to `reset_size` assignments of the new vector,
  so they are not immediately dead again and the next EMA step does not drag them back to the
  old, stale sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from strop.model.losses import commitment_loss, diversity_loss


@dataclass(frozen=True)
class QuantizerConfig:
    """What the vector quantizer owns: its widths, K and its codebook-maintenance constants.

    Built by `ModelConfig.quantizer` (which documents the defaults' provenance); constructed
    directly in tests.
    """

    d: int
    """Width of the program tokens."""
    code_dim: int
    """Width d_c of the code space (low, e.g. 8-16)."""
    k: int
    """Number of codes K."""
    decay: float = 0.99
    """EMA decay of the codebook statistics."""
    eps: float = 1e-5
    """Laplace smoothing constant of the cluster sizes."""
    dead_threshold: float = 0.1
    """A code whose EMA cluster size falls below this many assignments per step is dead and
    gets re-seeded by `restart_dead_codes`."""
    reset_size: float = 1.0
    """EMA cluster size given to a re-seeded code."""
    div_temperature: float = 0.1
    """Temperature of the soft assignment in the diversity loss."""

    def __post_init__(self) -> None:
        if min(self.d, self.code_dim) <= 0 or self.k < 2:
            raise ValueError(f"QuantizerConfig: need d, code_dim > 0 and k >= 2, got {self}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"QuantizerConfig: decay must be in (0, 1), got {self.decay}")


@dataclass
class QuantizerOut:
    """What the quantizer returns for a batch of raw program vectors (B, L, d).

    tokens: (B, L, d) straight-through quantised tokens after the d_c -> d projection.
    codes: (B, L) long indices into the codebook.
    z_e: (B, L, d_c) fp32 l2-normalised vectors before quantisation (carry gradients).
    z_q: (B, L, d_c) fp32 selected unit codes (no gradient).
    """

    tokens: torch.Tensor
    codes: torch.Tensor
    z_e: torch.Tensor
    z_q: torch.Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Low-dimensional l2-normalised codebook with EMA updates and dead-code restarts.

    Built from its `QuantizerConfig` (see there for each constant).
    """

    # Buffers (see the module docstring), declared so type checkers see tensors, not modules.
    codebook: torch.Tensor
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.k = cfg.k
        self.code_dim = cfg.code_dim
        self.decay = cfg.decay
        self.eps = cfg.eps
        self.dead_threshold = cfg.dead_threshold
        self.reset_size = cfg.reset_size
        self.div_temperature = cfg.div_temperature
        self.proj_in = nn.Linear(cfg.d, cfg.code_dim)
        self.proj_out = nn.Linear(cfg.code_dim, cfg.d)
        codes = F.normalize(torch.randn(cfg.k, cfg.code_dim), dim=-1)
        self.register_buffer("codebook", codes)
        self.register_buffer("cluster_size", torch.ones(cfg.k))
        self.register_buffer("embed_sum", codes.clone())

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> QuantizerOut:
        with torch.autocast(device_type=x.device.type, enabled=False):
            z_e = F.normalize(self.proj_in(x.float()), dim=-1)
            with torch.no_grad():
                codes = (z_e @ self.codebook.t()).argmax(dim=-1)
            z_q = F.embedding(codes, self.codebook)
            straight_through = z_q + (z_e - z_e.detach())
        tokens = self.proj_out(straight_through)
        return QuantizerOut(tokens=tokens, codes=codes, z_e=z_e, z_q=z_q)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Tokens (…, d) of stored codes, identical to the forward's tokens for those codes."""
        with torch.autocast(device_type=codes.device.type, enabled=False):
            z_q = F.embedding(codes, self.codebook)
        return self.proj_out(z_q)

    # ------------------------------------------------------------------ losses

    def losses(self, out: QuantizerOut, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted `commit_loss` and `diversity_loss` over active positions (B, L) bool.

        The codebook is cloned so that an EMA update before `backward()` does not invalidate
        the tensors autograd saved.
        """
        codebook = self.codebook.detach().clone()
        return {
            "commit_loss": commitment_loss(out.z_e, out.z_q, active),
            "diversity_loss": diversity_loss(out.z_e, codebook, active, self.div_temperature),
        }

    # ------------------------------------------------------------------ codebook maintenance

    @torch.no_grad()
    def update_codebook(self, out: QuantizerOut, active: torch.Tensor) -> None:
        """One EMA step from the active positions: Laplace-smoothed, DDP-summed, re-normalised.

        Inactive positions add exact zeros instead of being selected by a boolean index (and
        counts are an `index_add_`, not `torch.bincount`): both would read a size back to the
        host, a sync per step on CUDA; the sums and counts are the same numbers."""
        keep = active.reshape(-1)
        z_e = out.z_e.detach().float().reshape(keep.shape[0], -1)  # (B * L, d_c)
        z_e = torch.where(keep.unsqueeze(1), z_e, torch.zeros_like(z_e))
        codes = out.codes.reshape(-1)
        counts = torch.zeros_like(self.cluster_size).index_add_(0, codes, keep.to(torch.float32))
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z_e)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        self.embed_sum.lerp_(sums, 1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.k * self.eps) * total
        self.codebook.copy_(F.normalize(self.embed_sum / smoothed.unsqueeze(-1), dim=-1))

    @torch.no_grad()
    def restart_dead_codes(
        self, out: QuantizerOut, active: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Re-seed dead codes from active batch vectors; returns how many were re-seeded (a 0-d
        tensor on the codebook's device).

        Decided on the device, without a host read (a training step need not wait for the
        GPU): every batch vector gets a random key (from `generator`, on its device; inactive
        positions sort last), and the dead codes, in index order, take the vectors of the
        smallest keys, never the same vector twice and never an inactive one. Under DDP rank
        0's choice is broadcast, so codebooks never diverge across ranks.
        """
        dead = self.cluster_size < self.dead_threshold
        z = out.z_e.detach().float().flatten(0, -2)  # (N, C)
        act = active.reshape(-1).to(z.device)
        if act.numel() == 0:
            return torch.zeros((), dtype=torch.long, device=self.codebook.device)
        keys = torch.rand(
            act.numel(), generator=generator, device=generator.device if generator else "cpu"
        )
        if keys.device != z.device:  # pinned, so the copy does not wait for the device
            keys = (keys.pin_memory() if z.device.type == "cuda" else keys).to(
                z.device, non_blocking=True
            )
        order = torch.where(act, keys, 2.0).argsort()
        rank = dead.long().cumsum(0) - 1  # each dead code's place among the dead ones
        take = dead & (rank < act.sum())
        new_codes = F.normalize(z[order[rank.clamp(0, act.numel() - 1)]], dim=-1)
        if _distributed():
            # Rank 0's draw wins everywhere, so codebooks never diverge across ranks.
            flags = take.to(torch.uint8)
            dist.broadcast(flags, src=0)
            dist.broadcast(new_codes, src=0)
            take = flags.bool()
        self.codebook.copy_(torch.where(take[:, None], new_codes, self.codebook))
        self.cluster_size.copy_(torch.where(take, self.reset_size, self.cluster_size))
        self.embed_sum.copy_(
            torch.where(take[:, None], new_codes * self.reset_size, self.embed_sum)
        )
        return take.sum()
