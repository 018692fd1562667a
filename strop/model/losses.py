"""The loss terms of the training objective (paper Sec. 2.2; `docs/METHOD.md`).

    loss = align + w_commit * commit + w_div(t) * diversity (+ w_len * length from phase 3)

Each term is a pure function of tensors so the trainer composes them and the curriculum decides
the weights; none of them reads a config. The weights themselves are `ModelConfig` fields
(`w_mse`, `w_commit`, `w_div`, `w_len`, `w_pixel`).

Design decisions
- `align_error` returns one value per sample, not a scalar: the phase-2 oracle (and the
  `search:EPS` export) needs the per-sample error at a given prefix length; the align loss is
  its batch mean.
- Cosine and MSE are computed in fp32 whatever the autocast dtype: teacher features have a few
  large channels (DINOv3's high-norm dimensions), and a bf16 squared error over them loses the
  small ones.
- Commitment and diversity act on the l2-normalised low-dimensional vectors (the quantizer's
  `z_e`), averaged over active-prefix positions only: positions the interpreter never sees
  must not pull on the codebook statistics either.
- Diversity is the KL divergence of the batch-mean soft assignment to the uniform distribution,
  `sum_k q_k log(K q_k)`, which is 0 exactly when usage is uniform and log K when the batch
  collapses onto one code. The soft assignment is a softmax of cosine similarities divided by a
  temperature (a config field): cosine lies in [-1, 1], so without it the softmax is nearly
  flat and the loss carries no signal.
- The length loss is the MSE of `L_hat / L_max` against `L* / L_max` (paper Appendix A, phase 3);
  the head's input is already detached, so its gradient reaches the head only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def align_error(
    field: torch.Tensor,
    target: torch.Tensor,
    w_mse: float,
    patch_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample alignment error `(1 - cos) + w_mse * mse`, averaged over patches: (B,).

    field, target: (B, P, D) interpreted field and frozen teacher features.
    patch_weights: optional (B, P) weights of the patches' errors in that average (opt-in
    `model.foreground_weights`; None: the plain mean).
    """
    if field.shape != target.shape:
        raise ValueError(
            f"align_error: field has shape {tuple(field.shape)}, target {tuple(target.shape)}"
        )
    field = field.float()
    target = target.float()
    cos = F.cosine_similarity(field, target, dim=-1, eps=1e-6)  # (B, P)
    mse = (field - target).pow(2).mean(dim=-1)  # (B, P)
    per_patch = 1.0 - cos + w_mse * mse
    if patch_weights is not None:
        per_patch = per_patch * patch_weights.float()
    return per_patch.mean(dim=1)


def align_loss(field: torch.Tensor, target: torch.Tensor, w_mse: float) -> torch.Tensor:
    """The batch mean of `align_error`."""
    return align_error(field, target, w_mse).mean()


def _masked_mean(values: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    weight = active.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def commitment_loss(z_e: torch.Tensor, z_q: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """`|| z_e - sg(z_q) ||^2 / d_c` per position, mean over active positions.

    z_e, z_q: (B, L, d_c) l2-normalised vectors; active: (B, L) bool.

    The squared distance is averaged over the code dimension (the `F.mse_loss` convention of
    VQ-VAE implementations and vector-quantize-pytorch), not summed: with the sum, weight 0.25
    against the patch-averaged align loss pulled every image's z_e onto one code per position
    within a few hundred steps (programs identical across images, field = mean field; measured
    on the tiny preset), while the mean keeps per-image programs.
    """
    per_position = (z_e.float() - z_q.detach().float()).pow(2).mean(dim=-1)
    return _masked_mean(per_position, active)


def diversity_loss(
    z_e: torch.Tensor, codebook: torch.Tensor, active: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(batch-mean soft assignment || uniform) over active positions; 0 for uniform usage.

    z_e: (B, L, d_c) normalised vectors; codebook: (K, d_c) unit codes (no gradient).
    """
    logits = z_e.float() @ codebook.detach().float().t() / temperature  # (B, L, K)
    probs = logits.softmax(dim=-1)
    weight = active.to(probs.dtype).unsqueeze(-1)
    mean_probs = (probs * weight).sum(dim=(0, 1)) / weight.sum().clamp_min(1.0)
    k = codebook.shape[0]
    return (mean_probs * (mean_probs * k).clamp_min(1e-12).log()).sum()


def length_loss(l_hat: torch.Tensor, target: torch.Tensor, l_max: int) -> torch.Tensor:
    """MSE of `L_hat / L_max` against `L* / L_max` (phase 3 onwards)."""
    return F.mse_loss(l_hat.float() / l_max, target.float().detach() / l_max)


def pixel_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """L1 + MSE of the pixel probe against the input image, both in [0, 1].

    The probe is inspection only (its input is detached), so the choice does not shape the
    codebook; L1 keeps edges sharper than MSE alone.
    """
    recon = recon.float()
    images = images.float()
    return F.l1_loss(recon, images) + F.mse_loss(recon, images)
