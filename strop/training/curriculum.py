"""The four-phase adaptive program-length curriculum (paper Sec. 2.3 and Appendix A).

Every step the generator emits all `L_max` quantised tokens; this module decides, per sample,
the prefix length `L_i` the interpreter may read, and the oracle target `L*_i` the length head
regresses to. Everything here is a pure function of (step, config, statistics); the only state
is explicit (`OracleState`, a few floats, and `TargetBank`, one target per training image),
so the trainer checkpoints it and a resumed run continues bit-for-bit.

Phases (`CurriculumConfig.phase_steps = (s1, s2, s3, s4)`, step ranges are half-open):

| phase | steps | lengths | oracle targets | length head |
| --- | --- | --- | --- | --- |
| 1 | [0, s1) | random, bias `a_t` annealed `a_0 -> 1` (eq. 1) | - | - |
| 2 | [s1, s2) | random, uniform | accumulated (eqs. 2-5) | - |
| 3 | [s2, s3) | random, uniform | accumulated | trained (eq. 6) |
| 4 | [s3, s4) | predicted with probability `p_t` ramping 0 -> 1 (eq. 7) | accumulated | trained |
| 5 | [s4, ...) | predicted only | accumulated | trained |

`length_mode="fixed"` is the paper's Table 15 baseline: every sample keeps all `L_max` tokens,
no oracle, no head; its phase is reported as 0.

Design decisions (the paper leaves these open; each constant is a documented config field):
- Phase 1 samples `L = clip(ceil(L_max * u^(1/a_t)), L_min, L_max)`, `u ~ U(0, 1)`; after
  phase 1 random lengths use `a = 1` (uniform), as the paper's phases 2-3 do.
- The error EMA (`e_ema`, eq. 2) and the slope EMAs (eq. 4) are updated with the current batch
  *before* they normalise it, so the very first oracle batch is normalised by its own mean
  instead of an arbitrary initial value. The slope EMAs track the mean of the positive part of
  the slopes over non-clamped probes only (a negative slope is noise: a longer prefix cannot
  be worse in expectation), floored at `slope_floor` so a flat batch cannot divide by zero.
- Saturation: `sigma(s) = tanh(max(s_hat, 0) / tau)` with `s_hat = s / EMA(s)`: a typical
  slope (`s_hat = 1`) gives `tanh(1/tau)`, a much larger one saturates at 1, a flat curve 0.
- A clamped probe (`L - r < L_min` or `L + r > L_max`) is dropped; its slope is imputed with
  its EMA (`s_hat = 1`, "this sample is typical"), so boundary samples still get a correction
  from the side that was measured and no fake evidence from the side that was not.
- Targets are accumulated per training image (`strop.training.bank.TargetBank`, indexed by
  the dataset index) as an exponential average over that image's visits (`target_ema_decay`), so each image's
  target tracks the improving model but one noisy random length does not dominate it. The
  oracle keeps running in phases 3-5 (probes around the random or predicted length), which
  refreshes the targets the head trains on. Under DDP the trainer gathers (index, target)
  pairs from every rank so every rank holds the same bank; rank 0 checkpoints it. The bank,
  the oracle's arithmetic and its EMAs (0-d float64 tensors) stay on the training device, so
  a step never waits for the GPU to hand them back; the checkpoint holds plain CPU tensors
  and floats, as before.
- The phase-3 loss itself (eq. 6) is `strop.model.losses.length_loss`, weighted by the model's `w_len`;
  its gradient reaches the head only because the model detaches the head's input.
- Predicted lengths are `clip(round(L_hat), L_min, L_max)`, the inference rule of the paper,
  through `strop.model.length_head.round_lengths` (the one place that rounds `L_hat`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from strop.model.length_head import round_lengths
from strop.training.host_sync import to_device

FIXED_PHASE = 0
PREDICTED_PHASE = 5
PHASE_NAMES = {
    0: "fixed",
    1: "random",
    2: "oracle",
    3: "head",
    4: "handoff",
    5: "predicted",
}


def phase_label(phase: int) -> str:
    """The phase as a reader of the paper names it: one of the four phases, the steps after
    the handoff, or the fixed-length baseline (metrics.jsonl keeps the integer)."""
    if phase == FIXED_PHASE:
        return "fixed length (baseline)"
    if phase == PREDICTED_PHASE:
        return "after phase 4: predicted lengths"
    return f"phase {phase}/4 {PHASE_NAMES.get(phase, '?')}"


class CurriculumConfig(BaseModel):
    """Constants of the length curriculum (paper Table 4); defaults follow STROP-S."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    length_mode: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="adaptive: the four-phase curriculum; fixed: all L_max tokens, no head "
        "(Table 15 baseline).",
    )
    phase_steps: tuple[int, int, int, int] = Field(
        (100_000, 150_000, 200_000, 250_000),
        description="Ends of phase 1 (random), 2 (oracle), 3 (head) and 4 (handoff ramp); "
        "predicted lengths only afterwards.",
    )
    a0: float = Field(
        3.0, ge=1.0, description="Eq. 1 initial truncation bias a_0 (>1 favours long prefixes)."
    )
    target_mean_frac: float = Field(
        0.5, gt=0.0, le=1.0, description="Eq. 2 L_bar / L_max: the target when e_i = e_ema."
    )
    target_gamma: float = Field(1.0, gt=0.0, description="Eq. 2 exponent g.")
    error_ema_decay: float = Field(0.99, ge=0.0, lt=1.0, description="Decay of e_ema (eq. 2).")
    probe_radius: int = Field(2, ge=1, description="Probe radius r in tokens (eq. 3).")
    slope_ema_decay: float = Field(
        0.99, ge=0.0, lt=1.0, description="Decay of the slope EMAs (eq. 4)."
    )
    slope_tau: float = Field(1.0, gt=0.0, description="Saturation temperature tau (eq. 4).")
    slope_floor: float = Field(
        1e-4, gt=0.0, description="Lower bound of a slope EMA, so a flat batch cannot divide by 0."
    )
    delta: float = Field(
        2.0, ge=0.0, description="Eq. 5 correction in tokens: +delta extend, -delta compress."
    )
    target_ema_decay: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Per-image accumulation of targets across visits (0: keep the latest).",
    )
    quality_curve_decay: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Per-image accumulation of probed errors across visits for the "
        "eps-conditioned head (model.quality_head; ours, see strop.training.quality).",
    )
    quality_min_cells: int = Field(
        3,
        ge=1,
        description="Measured lengths an image's error curve needs before the eps-conditioned "
        "head trains on it (ours).",
    )

    @field_validator("phase_steps", mode="before")
    @classmethod
    def _parse_phase_steps(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return tuple(int(v) for v in value.replace(" ", "").split(","))
            except ValueError:
                raise ValueError(f"expected four comma-separated integers, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _check_phase_order(self) -> CurriculumConfig:
        steps = self.phase_steps
        if steps[0] < 0 or any(b < a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"phase_steps must be non-negative and non-decreasing, got {steps}")
        return self


# --------------------------------------------------------------------------- schedule


def phase_at(step: int, cfg: CurriculumConfig) -> int:
    """Curriculum phase of `step`: 1-4 as in the paper, 5 after the handoff, 0 for fixed."""
    if cfg.length_mode == "fixed":
        return FIXED_PHASE
    for phase, end in enumerate(cfg.phase_steps, start=1):
        if step < end:
            return phase
    return PREDICTED_PHASE


def truncation_bias(step: int, cfg: CurriculumConfig) -> float:
    """Eq. 1 schedule: `a_t` falls linearly from `a_0` at step 0 to 1 at the end of phase 1."""
    end = cfg.phase_steps[0]
    if end <= 0 or step >= end:
        return 1.0
    return cfg.a0 + (1.0 - cfg.a0) * step / end


def handoff_probability(step: int, cfg: CurriculumConfig) -> float:
    """Eq. 7 ramp `p_t`: 0 before phase 4, linear over it, 1 afterwards."""
    start, end = cfg.phase_steps[2], cfg.phase_steps[3]
    if step < start:
        return 0.0
    if step >= end:
        return 1.0
    return (step - start) / (end - start)


def oracle_active(phase: int) -> bool:
    """Oracle targets are estimated from phase 2 on (and never for fixed programs)."""
    return phase >= 2


def head_active(phase: int) -> bool:
    """The length head is trained from phase 3 on."""
    return phase >= 3


def diversity_weight(step: int, weight: float, warmup_steps: int) -> float:
    """`w_div(t)`: linear warm-up from 0 to `weight` over `warmup_steps` steps."""
    if warmup_steps <= 0:
        return weight
    return weight * min(1.0, step / warmup_steps)


# --------------------------------------------------------------------------- lengths


def sample_random_lengths(
    n: int, a: float, l_min: int, l_max: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Eq. 1: `clip(ceil(L_max * u^(1/a)), L_min, L_max)`, `u ~ U(0, 1)`; (n,) long on CPU."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    lengths = torch.ceil(l_max * u.pow(1.0 / a)).long()
    return lengths.clamp_(l_min, l_max)


def choose_lengths(
    step: int,
    cfg: CurriculumConfig,
    l_min: int,
    l_max: int,
    n: int,
    predicted: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training prefix length of every sample (the one place that decides it).

    Returns `(lengths, from_head)`, both (n,): lengths as long, `from_head` a bool mask of the
    samples truncated at the head's prediction; on CPU, or on the device of `predicted` (n,)
    float `L_hat`, which is needed from phase 4 on (the draws move there, so the predictions
    are never read back to the host).
    """
    phase = phase_at(step, cfg)
    if phase == FIXED_PHASE:
        return torch.full((n,), l_max, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    lengths = sample_random_lengths(n, truncation_bias(step, cfg), l_min, l_max, generator)
    p = handoff_probability(step, cfg)
    if p <= 0.0:
        return lengths, torch.zeros(n, dtype=torch.bool)
    if predicted is None:
        raise ValueError(f"step {step} (phase {phase}): predicted lengths are required")
    from_head = torch.rand(n, generator=generator, dtype=torch.float64) < p
    lengths, from_head = (to_device(t, predicted.device) for t in (lengths, from_head))
    head_lengths = round_lengths(predicted, l_min, l_max)
    return torch.where(from_head, head_lengths, lengths), from_head


def probe_lengths(
    lengths: torch.Tensor, radius: int, l_min: int, l_max: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probe lengths `L - r`, `L + r` clipped to [L_min, L_max], with masks of unclamped probes."""
    down, up = lengths - radius, lengths + radius
    return down.clamp(l_min, l_max), up.clamp(l_min, l_max), down >= l_min, up <= l_max


# --------------------------------------------------------------------------- oracle


#: A batch-level EMA: a float (a fresh or resumed state) or a 0-d float64 tensor on the device
#: (after an oracle step: float64 does the EMA's arithmetic exactly as Python floats do).
Ema = float | torch.Tensor


@dataclass(frozen=True)
class OracleState:
    """Batch-level EMAs of the oracle (NaN until the first oracle batch)."""

    error_ema: Ema = math.nan
    slope_down_ema: Ema = math.nan
    slope_up_ema: Ema = math.nan

    def to_dict(self) -> dict[str, float]:
        """Plain floats for the checkpoint (reads device values: checkpoint steps only)."""
        return {
            "error_ema": float(self.error_ema),
            "slope_down_ema": float(self.slope_down_ema),
            "slope_up_ema": float(self.slope_up_ema),
        }

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> OracleState:
        return cls(**{k: float(v) for k, v in data.items()})


def _on(value: Ema, device: torch.device) -> torch.Tensor:
    """An EMA as a 0-d float64 tensor on `device` (a fill, never a blocking copy)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float64)
    return torch.full((), value, dtype=torch.float64, device=device)


def _ema(old: torch.Tensor, value: torch.Tensor, decay: float) -> torch.Tensor:
    """`value` while `old` is NaN, else the decayed blend (0-d float64, on the device)."""
    return torch.where(old.isnan(), value, decay * old + (1.0 - decay) * value)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `values` where `mask` (float64, NaN when empty) and whether any is there,
    without a boolean index (whose size the host would have to read)."""
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return (total / count.to(values.dtype)).double(), count > 0


def saturate(normalised_slope: torch.Tensor, tau: float) -> torch.Tensor:
    """Temperature saturation of an EMA-normalised slope into [0, 1] (eq. 4)."""
    return torch.tanh(normalised_slope.clamp(min=0.0) / tau)


@dataclass(frozen=True)
class OracleStats:
    """Batch means of one oracle step (eqs. 2-5), logged as the `oracle_*` metrics: 0-d
    tensors on the device, read on log steps (`strop.training.log.MetricLog`)."""

    target_mean: float | torch.Tensor
    """Mean corrected target L* (eq. 5)."""
    base_mean: float | torch.Tensor
    """Mean base target L_base (eq. 2)."""
    w_extend: float | torch.Tensor
    """Mean extend weight (eq. 4)."""
    w_keep: float | torch.Tensor
    """Mean keep weight (eq. 4)."""
    w_compress: float | torch.Tensor
    """Mean compress weight (eq. 4)."""
    error_ema: float | torch.Tensor
    """The batch-level error EMA after this batch (eq. 2)."""

    def metrics(self) -> dict[str, float | torch.Tensor]:
        """The metrics.jsonl keys of these values."""
        return {
            "oracle_target_mean": self.target_mean,
            "oracle_base_mean": self.base_mean,
            "oracle_w_extend": self.w_extend,
            "oracle_w_keep": self.w_keep,
            "oracle_w_compress": self.w_compress,
            "oracle_error_ema": self.error_ema,
        }


def oracle_targets(
    lengths: torch.Tensor,
    error: torch.Tensor,
    error_down: torch.Tensor,
    error_up: torch.Tensor,
    valid_down: torch.Tensor,
    valid_up: torch.Tensor,
    state: OracleState,
    cfg: CurriculumConfig,
    l_min: int,
    l_max: int,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, OracleState, OracleStats]:
    """Oracle length targets of one batch (eqs. 2-5) and the updated EMAs.

    `error*` are per-sample alignment errors (n,) at `L`, `L - r` and `L + r`; `valid_*` mark
    the unclamped probes. Returns `(targets (n,) float in [L_min, L_max], new_state, stats)`.
    `lengths` only fixes the device; the base target does not depend on the drawn length.

    Everything stays on the errors' device, the EMAs and the statistics included (0-d
    tensors): nothing here waits for the GPU. The EMAs are float64, as the Python floats they
    were; the mean over unclamped probes is a masked sum, which equals the mean of the
    selected probes exactly while a batch holds fewer than 8 samples (the float32 sum then
    adds them one by one) and otherwise up to the order of a float32 sum.
    """
    error, error_down, error_up = (t.detach().float() for t in (error, error_down, error_up))
    device = error.device
    valid_down, valid_up = valid_down.to(device), valid_up.to(device)

    # Eq. 2: base target from the error relative to the batch-level EMA.
    error_ema = _ema(_on(state.error_ema, device), error.mean().double(), cfg.error_ema_decay)
    l_bar = cfg.target_mean_frac * l_max
    base = l_bar * (error / error_ema.clamp(min=eps)).pow(cfg.target_gamma)
    base = base.clamp(l_min, l_max)

    # Eq. 3: one-sided relative slopes; clamped probes are dropped from the EMAs.
    denom = error.clamp(min=eps)
    s_down = (error_down - error) / denom
    s_up = (error - error_up) / denom
    down_ema, up_ema = _on(state.slope_down_ema, device), _on(state.slope_up_ema, device)
    mean_down, any_down = _masked_mean(s_down.clamp(min=0), valid_down)
    down_ema = torch.where(any_down, _ema(down_ema, mean_down, cfg.slope_ema_decay), down_ema)
    mean_up, any_up = _masked_mean(s_up.clamp(min=0), valid_up)
    up_ema = torch.where(any_up, _ema(up_ema, mean_up, cfg.slope_ema_decay), up_ema)
    down_norm = s_down / _nan_to(down_ema, 1.0).clamp(min=cfg.slope_floor)
    up_norm = s_up / _nan_to(up_ema, 1.0).clamp(min=cfg.slope_floor)
    # A dropped probe is imputed as typical (normalised slope 1), see the module docstring.
    down_norm = torch.where(valid_down, down_norm, torch.ones_like(down_norm))
    up_norm = torch.where(valid_up, up_norm, torch.ones_like(up_norm))

    # Eq. 4: partition of unity; extension dominates.
    sig_down = saturate(down_norm, cfg.slope_tau)
    w_extend = saturate(up_norm, cfg.slope_tau)
    w_keep = (1.0 - w_extend) * sig_down
    w_compress = (1.0 - w_extend) * (1.0 - sig_down)

    # Eq. 5: corrected target.
    targets = (base + cfg.delta * (w_extend - w_compress)).clamp(l_min, l_max)
    new_state = OracleState(error_ema, down_ema, up_ema)
    stats = OracleStats(
        target_mean=targets.mean(),
        base_mean=base.mean(),
        w_extend=w_extend.mean(),
        w_keep=w_keep.mean(),
        w_compress=w_compress.mean(),
        error_ema=error_ema,
    )
    return targets.to(lengths.device), new_state, stats


def _nan_to(value: torch.Tensor, default: float) -> torch.Tensor:
    return torch.where(value.isnan(), torch.full_like(value, default), value)
