"""Length modes: how long each image's program is, at inference (`--length-mode`,
`Strop.encode(images, length_mode)`).

`head` (the length head's rounded prediction, the paper's inference rule), `fixed` (all
L_max tokens; the paper's Table 15 baseline), `prefix:N` (exactly N tokens), `cap:N` (the
head's length, at most N), `search:EPS` (the shortest prefix whose alignment error is at most
EPS, found by interpreting every length) and `quality:EPS` (the eps-conditioned head's answer
to the same question, in one pass). `program_lengths` is the one dispatch over them, used by
`Strop.encode_features` and by `strop.evaluation.batch_encoding` (export, eval, analyze).
Design decisions are in `strop.evaluation.export`'s docstring; the modes live in the model
layer so that a tokenizer loaded with `Strop.from_pretrained` takes every mode too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

import torch

from strop.model.config import ModelConfig
from strop.model.losses import align_error
from strop.model.quality_head import shortest_reaching


class LengthModel(Protocol):
    """What the modes need of a model (`strop.model.network.Strop`; named by shape, since
    `Strop.encode` imports this module)."""

    @property
    def cfg(self) -> ModelConfig: ...

    def interpret_tokens(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...

    def quality_lengths(self, feats: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor: ...

    def head_lengths(self, feats: torch.Tensor) -> torch.Tensor: ...


#: The modes that take an integer budget N and those that take a target error EPS.
BUDGET_KINDS = ("prefix", "cap")
EPS_KINDS = ("search", "quality")


class LengthModeError(ValueError):
    """A `--length-mode` value that cannot be used."""


@dataclass(frozen=True)
class LengthMode:
    """How each program's length is chosen: `head`, `fixed`, `prefix`/`cap` (with `n`) or
    `search`/`quality` (with `eps`)."""

    kind: str
    eps: float | None = None
    n: int | None = None

    def __str__(self) -> str:
        if self.kind in EPS_KINDS:
            return f"{self.kind}:{self.eps:g}"
        if self.kind in BUDGET_KINDS:
            return f"{self.kind}:{self.n}"
        return self.kind


_EXPECTED = "expected head, fixed, prefix:N, cap:N, search:EPS or quality:EPS (e.g. search:0.2)"
#: What an N or an EPS may be spelled as: plain ASCII decimals. Python's int() and float()
#: also take "4_0" (40), "nan", "inf" and non-ASCII digits, none of which a user means.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_eps(raw: str, option: str) -> float:
    """One target error EPS as typed (`option` names it in errors): a positive, finite
    decimal number, else `LengthModeError`."""
    text = raw.strip()
    if not _NUMBER.fullmatch(text):
        raise LengthModeError(f"{option}: EPS must be a number, got {raw!r}")
    eps = float(text)
    if not (eps > 0 and math.isfinite(eps)):
        raise LengthModeError(f"{option}: EPS must be a positive number, got {raw!r}")
    return eps


#: The most EPS values one `--quality-eps` takes (a calibration curve needs a handful).
MAX_QUALITY_EPS = 32


def parse_eps_values(text: str | None) -> list[float] | None:
    """`--quality-eps` (comma-separated EPS values) -> at least two distinct values, sorted
    (a calibration curve is read in EPS order; a repeated value adds nothing to it)."""
    if text is None:
        return None
    parts = [part for part in text.split(",") if part.strip()]
    if len(parts) > MAX_QUALITY_EPS:  # each EPS is a pass over the split: refuse, don't grind
        raise LengthModeError(
            f"--quality-eps: {len(parts)} values; at most {MAX_QUALITY_EPS} (each one is a "
            "search over every image)"
        )
    values = sorted({parse_eps(part, f"--quality-eps {text[:80]}") for part in parts})
    if len(values) < 2:
        raise LengthModeError(
            f"--quality-eps {text}: expected at least two distinct positive numbers"
        )
    return values


def parse_length_mode(text: str | LengthMode | None, trained: str = "adaptive") -> LengthMode:
    """`head` | `fixed` | `prefix:N` | `cap:N` | `search:EPS` | `quality:EPS` -> LengthMode.

    N must be a positive integer (its range is the run's, see `check_length_mode`), EPS a
    positive number. None picks the run's own mode: `fixed` for a run trained with
    `curriculum.length_mode=fixed` (its length head was never trained), else `head`.
    """
    if isinstance(text, LengthMode):
        return text
    if text is None:
        return LengthMode("fixed" if trained == "fixed" else "head")
    value = str(text).strip().lower()
    if value in ("head", "fixed"):
        return LengthMode(value)
    kind, sep, raw = value.partition(":")
    if sep and kind in BUDGET_KINDS:
        if not _INTEGER.fullmatch(raw.strip()):
            raise LengthModeError(f"--length-mode {text}: N must be an integer, got {raw!r}")
        n = int(raw)
        if n < 1:
            raise LengthModeError(f"--length-mode {text}: N must be at least 1, got {n}")
        return LengthMode(kind, n=n)
    if sep and kind in EPS_KINDS:
        return LengthMode(kind, parse_eps(raw, f"--length-mode {text}"))
    raise LengthModeError(f"--length-mode {text!r}: {_EXPECTED}")


def check_length_mode(mode: LengthMode, model_cfg: ModelConfig, run: str = "the run") -> None:
    """Refuse a mode this run cannot honour: N outside [L_min, L_max], or `quality:EPS`
    on a run trained without the eps-conditioned head (`LengthModeError`, exit 2)."""
    lo, hi = model_cfg.l_min, model_cfg.l_max
    if mode.n is not None and not lo <= mode.n <= hi:
        raise LengthModeError(
            f"--length-mode {mode}: N must be in [L_min, L_max] = [{lo}, {hi}] for {run}, got {mode.n}"
        )
    if mode.kind == "quality" and not model_cfg.quality_head:
        raise LengthModeError(
            f"--length-mode {mode}: {run} has no eps-conditioned length head "
            "(train it with --set model.quality_head=true)"
        )


def check_quality_eps(values: list[float] | None, model_cfg: ModelConfig, run: str) -> None:
    """Refuse `--quality-eps` for a run without the eps-conditioned head (it would be
    ignored without a word) and values that are not positive finite numbers."""
    if values is None:
        return
    if not model_cfg.quality_head:
        raise LengthModeError(
            f"--quality-eps: {run} has no eps-conditioned length head, so eval.json gets no "
            "quality_control block (train it with --set model.quality_head=true)"
        )
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad or len(values) < 2:
        raise LengthModeError(
            f"--quality-eps: expected at least two positive finite numbers, got {list(values)}"
        )


def search_lengths(
    model: LengthModel,
    feats: torch.Tensor,
    tokens: torch.Tensor,
    eps: float,
    w_mse: float,
    l_min: int,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortest prefix in [l_min, L_max] with align error <= eps (L_max if none).

    Returns (lengths (B,) long, errors (B, L_max - l_min + 1)) where errors[:, i] is the
    error at prefix length l_min + i.
    """
    b, l_max = tokens.shape[0], tokens.shape[1]
    candidates = torch.arange(l_min, l_max + 1, device=tokens.device)
    img_idx = torch.arange(b, device=tokens.device).repeat_interleave(len(candidates))
    len_idx = candidates.repeat(b)
    errors = torch.empty(b * len(candidates), device=tokens.device)
    for start in range(0, len(img_idx), chunk):
        sl = slice(start, start + chunk)
        field = model.interpret_tokens(tokens[img_idx[sl]], len_idx[sl])
        errors[sl] = align_error(field, feats[img_idx[sl]], w_mse).float()
    errors = errors.view(b, len(candidates))
    return shortest_reaching(errors, eps, l_min), errors


def mode_lengths(
    model: LengthModel, feats: torch.Tensor, head: torch.Tensor, mode: LengthMode
) -> torch.Tensor:
    """Each image's length under a one-pass mode (all but `search`), from the head's lengths."""

    if mode.kind == "head":
        return head
    if mode.kind == "fixed":
        return torch.full_like(head, model.cfg.l_max)
    if mode.kind == "prefix":
        assert mode.n is not None  # parse_length_mode sets it
        return torch.full_like(head, mode.n)
    if mode.kind == "cap":
        assert mode.n is not None
        return head.clamp(max=mode.n)
    if mode.kind == "quality":
        assert mode.eps is not None
        return model.quality_lengths(feats, mode.eps).long()
    raise LengthModeError(f"--length-mode {mode}: not a one-pass mode")


def program_lengths(
    model: LengthModel,
    feats: torch.Tensor,
    tokens: torch.Tensor,
    mode: LengthMode,
    head: torch.Tensor | None = None,
    w_mse: float | None = None,
    l_min: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each image's length under any mode (B,) long, and for `search` its errors at every
    prefix length (`search_lengths`; None for the one-pass modes). `head`: the head's lengths
    when the caller has them (else asked of the model, and only by a mode that reads them);
    `w_mse`, `l_min`: the search's error weight and shortest length (default: the model's)."""
    if mode.kind == "search":
        assert mode.eps is not None  # parse_length_mode sets it
        w = model.cfg.w_mse if w_mse is None else w_mse
        shortest = model.cfg.l_min if l_min is None else l_min
        return search_lengths(model, feats, tokens, mode.eps, w, shortest)
    return mode_lengths(
        model, feats, model.head_lengths(feats) if head is None else head, mode
    ), None
