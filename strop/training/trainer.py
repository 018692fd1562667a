"""The STROP trainer: one flat, timed step; checkpoints; resume; faults; DDP.

    fetch batch -> teacher features (or cached) -> lengths (curriculum) -> forward (main +
    probes, one interpreter call) -> oracle targets -> loss -> finite check -> backward ->
    clip -> AdamW step -> EMA codebook update and dead-code restarts -> log / validate / save

The ideas around the step live beside it in `strop.training`: `data` (datasets, loaders,
data position), `optim` (AdamW groups, warmup-hold-cosine schedule), `log` (the typed
`StepResult`, interval rows, TensorBoard, progress bar), `resume` (which config changes a
resume accepts), `checkpoint` and `curriculum` (phases, lengths, oracle, target bank).

Design decisions
- `TrainForward` is the differentiable forward of one step and the unit that DDP wraps and
  `torch.compile` compiles; the codebook EMA update and dead-code restarts are called after
  it, outside any compiled region (data-dependent shapes).
- Phase-2 probes (curriculum eq. 3) are batched with the main forward: the quantised tokens are
  repeated three times along the batch with the lengths `[L, L - r, L + r]` and go through
  `interpret_tokens` in one call. Only the main rows enter the loss; probe errors are read
  detached by the oracle.
- Every loss term is always computed, and the length loss is multiplied by 0 before phase 3,
  so DDP never sees an unused parameter; the head's gradients are then dropped (set to None)
  so AdamW neither moves nor decays it before it starts training.
- The pixel decoder (inspection only, paper claim iii: pixels never shape the codebook) learns
  from its own loss on the detached field. One backward runs on the sum (DDP wants one), but
  the detached input leaves the tokenizer's gradients exactly those of its own objective;
  the probe's gradients are then clipped by their own norm (`train.grad_clip`) and a
  non-finite one is zeroed by a mask on the device (its weights stay finite; its AdamW step
  then moves it by its moments alone), so no probe value reaches the tokenizer's update:
  with the probe loss scaled by 1000 the tokenizer's parameters after a step are
  bit-identical (`tests/test_train_trainer.py`). AdamW's update is per tensor, so one
  optimiser steps the two apart. `loss` in metrics.jsonl is the tokenizer's objective;
  `pixel_loss` and `pixel_grad_norm` are logged beside it. With cached features and no images
  the probe is frozen instead.
- Randomness that must survive a resume: length sampling uses a generator seeded from
  (seed, rank, step), so it needs no saved state; data order is the data position
  (`strop.training.data`: seeded sampler plus the count of batches consumed, worker seeds from a
  dedicated generator); the global Python/NumPy/torch RNG states are checkpointed.
- A checkpoint also holds the optimiser, schedule, curriculum state (oracle, target bank) and
  the open logging interval (`strop.training.log`), so a resumed run writes the same rows as a straight
  one (timings aside).
- A step the GPU can run ahead of: the step's loss terms, grad norm, lengths, predicted
  length, the pixel probe's norm and the oracle's statistics stay on the device
  (`strop.training.log.MetricLog` reads them on log steps), and so do the non-finite and stop
  flags (`check_pending` reads them on log, validation and checkpoint steps: the finite check
  lags at most `train.log_every` steps). The oracle, its target bank and the error-curve bank
  live on the device and are indexed with device tensors; host data (the lengths drawn from
  the step's generator, the dataset indices) goes in by pinned, non-blocking copies
  (`strop.training.host_sync`). A non-finite probe gradient is zeroed by a mask, not dropped
  by a branch. Dead codes are found and re-seeded on the device too, from the step's own
  generator (`VectorQuantizer.restart_dead_codes`), and the eps-conditioned head's targets,
  mask and loss are device tensors: no step reads a value on the host outside log,
  validation and checkpoint steps (`tests/test_train_host_reads.py` counts reads on CPU).
- The opt-in eps-conditioned length head (`model.quality_head`, `strop.training.quality`):
  each step feeds the three probe rows to the error-curve bank after the forward, and from
  phase 3 the head regresses the batch's stored curves (its loss joins the total, its
  gradients reach the head alone). None of it runs for a default run, whose metrics.jsonl
  stays byte-identical (`tests/test_eval_length_control.py`).
- Faults: a non-finite loss (agreed over ranks by one all-reduce) raises `TrainingDiverged`
  naming the step it happened at, at the next check: at most `train.log_every` steps later
  and always before a checkpoint, a validation or a metrics row, so the last checkpoint is
  never overwritten with bad weights. SIGINT sets a flag (also all-reduced, so every rank
  stops at the same step); training stops at the next check, a checkpoint is written, and
  `KeyboardInterrupt` propagates.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from strop.model import losses
from strop.model.interpreter import prefix_mask
from strop.model.network import GenOut, Strop
from strop.runs.files import RunFolderError
from strop.runs.folder import RunFolder, discover_runs, is_run_folder
from strop.runs.lock import RunLock
from strop.training import checkpoint as ckpt
from strop.training import curriculum as cur
from strop.training import data as train_data
from strop.training import distributed as distr
from strop.training.bank import ErrorCurveBank, TargetBank
from strop.training.config import RunConfig
from strop.training.curriculum import OracleState
from strop.training.host_sync import to_device
from strop.training.log import MetricLog, ProgressBar, StepResult
from strop.training.mfu import mfu, peak_bf16_flops, training_flops_per_image
from strop.training.optim import build_optimizer, build_scheduler, lr_factor
from strop.training.quality import curve_loss, curve_targets
from strop.training.resume import record_config, resolve_config

__all__ = [
    "ForwardResult",
    "LossTerms",
    "StepResult",
    "TrainForward",
    "Trainer",
    "TrainingDiverged",
    "lr_factor",
    "train",
]

logger = logging.getLogger(__name__)


def _clip_norm(params: Sequence[torch.Tensor], clip: float) -> torch.Tensor | float:
    """Total gradient norm of `params` (a device tensor: reading it waits for the GPU),
    clipped in place to `clip` when `clip > 0`."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip).detach()
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).detach()


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped without saving."""


def _gather_rows(rows: torch.Tensor, b: int) -> torch.Tensor:
    """Main, down and up probe rows (3b,) of every rank, as (main of all ranks, down of all
    ranks, up of all ranks), to line up with the gathered bank indices repeated 3x."""
    gathered = distr.all_gather_cat(rows)
    return gathered.view(-1, 3, b).transpose(0, 1).reshape(-1)


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    entropy = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


# --------------------------------------------------------------------------- forward


@dataclass
class ForwardResult:
    """What `TrainForward` returns (device tensors, with gradients where they have them)."""

    gen: GenOut
    """The full-length program of the batch."""
    active: torch.Tensor
    """(B, L_max) bool: the active prefix of the main rows."""
    errors: torch.Tensor
    """(copies * B,) per-sample alignment errors: main rows, then the probe rows if any."""
    l_hat: torch.Tensor
    """(B,) predicted lengths."""
    commit_loss: torch.Tensor
    diversity_loss: torch.Tensor
    pixel_loss: torch.Tensor | None
    """None when no images reach the pixel probe."""
    quality_curve: torch.Tensor | None = None
    """(B, L_max - L_min + 1) log errors predicted by the eps-conditioned head (opt-in; None
    without it)."""


@dataclass(frozen=True)
class PendingCheck:
    """A step's all-reduced (non-finite loss, stop requested) flags, still on the device, and
    its loss terms for the message should the loss be the non-finite one."""

    step: int
    flags: torch.Tensor
    terms: dict[str, torch.Tensor]


@dataclass
class LossTerms:
    """The loss terms of one step (unweighted) and the tokenizer's weighted total (the pixel
    probe's loss, `pixel`, is back-propagated beside it, not inside it)."""

    total: torch.Tensor
    align: torch.Tensor
    commit: torch.Tensor
    diversity: torch.Tensor
    length: torch.Tensor | None
    """Phase 3 on."""
    pixel: torch.Tensor | None
    quality: torch.Tensor | None = None
    """The eps-conditioned head's curve loss (opt-in; phase 3 on)."""

    def named(self) -> dict[str, torch.Tensor]:
        """The present terms under their metric names (for messages)."""
        named = {
            "align_loss": self.align,
            "commit_loss": self.commit,
            "diversity_loss": self.diversity,
            "length_loss": self.length,
            "pixel_loss": self.pixel,
            "quality_curve_loss": self.quality,
            "loss": self.total,
        }
        return {k: v for k, v in named.items() if v is not None}


def _item(value: torch.Tensor | None) -> torch.Tensor | None:
    """A step value left on the device (read on log steps, `strop.training.log`)."""
    return None if value is None else value.detach()


class TrainForward(nn.Module):
    """The differentiable part of a step (what DDP wraps and `torch.compile` compiles).

    `lengths` is (B,) or (3B,) = main, down and up probe lengths; the tokens are repeated to
    match and interpreted in one call.
    """

    def __init__(self, model: Strop, w_mse: float) -> None:
        super().__init__()
        self.model = model
        self.w_mse = w_mse

    def forward(
        self,
        feats: torch.Tensor,
        lengths: torch.Tensor,
        images: torch.Tensor | None,
        with_quality: bool = False,
    ) -> ForwardResult:
        model, b = self.model, feats.shape[0]
        copies = lengths.shape[0] // b
        gen = model.generate(feats)
        tokens = gen.tokens.repeat(copies, 1, 1) if copies > 1 else gen.tokens
        target = feats.repeat(copies, 1, 1) if copies > 1 else feats
        field_all = model.interpret_tokens(tokens, lengths)
        errors = losses.align_error(field_all, target, self.w_mse)
        field = field_all[:b]
        active = prefix_mask(lengths[:b], gen.codes.shape[1])
        quantizer = model.quantizer_losses(gen, active)
        pixel_loss = None
        if images is not None:
            # The probe may see only the first images of the batch (train.pixel_batch).
            recon = model.decode_pixels(field[: images.shape[0]])
            if images.shape[-2:] != recon.shape[-2:]:
                images = F.interpolate(images, size=recon.shape[-2:], mode="area")
            pixel_loss = losses.pixel_loss(recon, images)
        return ForwardResult(
            gen=gen,
            active=active,
            errors=errors,
            l_hat=model.predict_length(feats),
            commit_loss=quantizer["commit_loss"],
            diversity_loss=quantizer["diversity_loss"],
            pixel_loss=pixel_loss,
            quality_curve=model.predict_error_curve(feats) if with_quality else None,
        )


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Owns the modules, optimiser, data and curriculum state of one run."""

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: str | os.PathLike[str],
        progress: bool = True,
        on_log: Callable[[int, dict[str, Any]], None] | None = None,
    ):
        from strop.model import build_model

        self.dist = distr.init_distributed(cfg.train.device)
        self.run = RunFolder(Path(out_dir))
        self.cfg = resolve_config(self.run, cfg, self.dist.is_main)
        self.progress = progress and self.dist.is_main
        # Called with (step, logged row) at every logging interval, on the main rank: how a
        # caller that draws its own progress (the quickstart's worker processes) follows along.
        self.on_log = on_log if self.dist.is_main else None
        t, m, device = self.cfg.train, self.cfg.model, self.dist.device
        self.device = device
        self.use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        # Unused by training, but its state goes into every checkpoint: seeded, two trainings
        # of the same run write byte-identical checkpoint files.
        random.seed(t.seed)
        self.model = build_model(m).to(device)
        self.model.train()
        self.flops_per_image = self.model.flops_per_image()

        self.train_set, self.cached = train_data.training_set(self.cfg)
        # MFU (logged on CUDA in bf16, for devices in the peak table): the teacher's forward
        # counts when it runs online (strop.training.mfu).
        teacher_flops = (
            0 if self.cached else self.model.flops_per_image(True) - self.flops_per_image
        )
        self.train_flops_per_image = training_flops_per_image(self.flops_per_image, teacher_flops)
        self.peak_flops = (
            peak_bf16_flops(torch.cuda.get_device_name(device))
            if device.type == "cuda" and self.use_bf16
            else None
        )
        self.train_pixels = t.pixel_decoder and "image" in self.train_set[0]
        if not self.train_pixels:
            self.model.pixel_decoder.requires_grad_(False)
        self.data = train_data.TrainData(
            self.train_set,
            self.cfg,
            self.dist.rank,
            self.dist.world_size,
            pin_memory=device.type == "cuda",
        )
        self.val_loader, val_off = (
            train_data.val_loader(self.cfg) if self.dist.is_main else (None, None)
        )

        self.optimizer = build_optimizer(self.model, self.cfg, fused=device.type == "cuda")
        self.scheduler = build_scheduler(self.optimizer, self.cfg)
        self.oracle = OracleState()
        self.bank = TargetBank(
            len(self.train_set), self.cfg.curriculum.target_ema_decay, device=device
        )
        self.curves = (
            ErrorCurveBank(
                len(self.train_set),
                m.l_min,
                m.l_max,
                cfg.curriculum.quality_curve_decay,
                device=device,
            )
            if m.quality_head
            else None
        )
        self.step = 0  # steps completed
        self.metrics = MetricLog(self.run, write=self.dist.is_main)
        self._resume()
        record_config(self.run, self.cfg, self.dist.is_main)  # only once the resume worked
        if val_off:
            logger.warning("validation off: %s", val_off)
            self.metrics.event(self.step, "validation_off", reason=val_off)

        forward: nn.Module = TrainForward(self.model, m.w_mse)
        if self.dist.distributed:
            forward = nn.parallel.DistributedDataParallel(
                forward,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self._eager_forward = forward  # what `compile_forward` compiles
        self.forward = torch.compile(forward) if t.compile else forward
        if t.tensorboard and self.dist.is_main:
            self.metrics.open_tensorboard()
        self._sigint = False  # set by the signal handler, local to this process
        self._stop_requested = False  # agreed by all ranks at a check (`check_pending`)
        self._pending_checks: list[PendingCheck] = []  # steps whose flags are not read yet

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "curriculum": self._curriculum_state(),
            "data": self.data.state_dict(),
            "interval": self.metrics.state_dict(),
            "rng": ckpt.rng_state(),
        }

    def _curriculum_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"oracle": self.oracle.to_dict(), "bank": self.bank.state_dict()}
        if self.curves is not None:  # only conditioned runs carry the error curves
            state["curves"] = self.curves.state_dict()
        return state

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        path = ckpt.save_checkpoint(
            self.run.path, self.step, self.state_dict(), self.cfg.train.keep_checkpoints
        )
        self.metrics.flush()
        return path

    def _resume(self) -> None:
        if not ckpt.has_checkpoint(self.run.path):
            if self.dist.is_main:
                self._note(self.metrics.start_afresh())
            return
        # The weights are checked (and loaded) as each candidate is tried, so a checkpoint of
        # another model is skipped, naming why, for the newest one that fits.
        found = ckpt.load_resumable(
            self.run.path, "cpu", fits=lambda st: self.model.load_state_dict_checked(st["model"])
        )
        state = found.state
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.oracle = OracleState.from_dict(state["curriculum"]["oracle"])
        self.bank.load_state_dict(state["curriculum"]["bank"])
        if self.curves is not None and "curves" in state["curriculum"]:
            self.curves.load_state_dict(state["curriculum"]["curves"])
        self.step = int(state["step"])
        self.data.load_state_dict(state["data"])
        self.metrics.load_state_dict(state.get("interval", {}))
        if self.dist.is_main:
            ckpt.set_rng_state(state["rng"])
            self._note(found.describe())
            self._note(self.metrics.truncate(self.step))
        else:
            torch.manual_seed(self.cfg.train.seed + 7919 * self.dist.rank + self.step)

    def _note(self, message: str | None) -> None:
        """One line on stderr (rank 0) about what resuming found and did."""
        if message and self.dist.is_main:
            print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the step

    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless batches, continuing at the data position (see `train_data.TrainData`); what
        `fit` feeds to `train_step`, and what a caller timing `train_step` alone feeds it."""
        return self.data.batches()

    def compile_forward(self, backend: str) -> None:
        """Compile the step's forward with torch.compile's `backend` (`train.compile` uses
        the default, inductor; `python -m bench gpu` picks one the machine can run)."""
        self.forward = torch.compile(self._eager_forward, backend=backend)

    def _autocast(self) -> AbstractContextManager[Any]:
        if not self.use_bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = batch.get("image")
        if images is not None:
            images = images.to(self.device, non_blocking=True)
        if self.cached:
            feats = batch["feats"].to(self.device, non_blocking=True).float()
        elif images is None:
            raise ValueError("a training batch holds neither cached features nor images")
        else:
            with torch.no_grad(), self._autocast():
                feats = self.model.teacher_features(images).float()
        if not self.train_pixels or images is None:
            return feats, None
        return feats, images[: self.cfg.train.pixel_batch or None]

    def train_step(self, batch: dict[str, Any]) -> StepResult:
        """One optimisation step at `self.step`; returns the values to log."""
        cfg, m, step = self.cfg.curriculum, self.cfg.model, self.step
        l_min, l_max = m.l_min, m.l_max
        feats, images = self._features(batch)
        b = feats.shape[0]
        phase = cur.phase_at(step, cfg)
        gen = _step_generator(self.cfg.train.seed, self.dist.rank, step)

        predicted = None
        if phase != cur.FIXED_PHASE and cur.handoff_probability(step, cfg) > 0:
            with torch.no_grad(), self._autocast():
                predicted = self.model.predict_length(feats).float()
        lengths, from_head = cur.choose_lengths(step, cfg, l_min, l_max, b, predicted, gen)
        lengths, from_head = to_device(lengths, self.device), to_device(from_head, self.device)
        all_lengths = lengths
        if cur.oracle_active(phase):
            down, up, valid_down, valid_up = cur.probe_lengths(
                lengths, cfg.probe_radius, l_min, l_max
            )
            all_lengths = torch.cat([lengths, down, up])

        with self._autocast():
            out = self.forward(feats, all_lengths, images, self.curves is not None)
        errors = out.errors.detach()
        oracle_stats = None
        if cur.oracle_active(phase):
            e, e_down, e_up = errors.float().split(b)
            targets, self.oracle, oracle_stats = cur.oracle_targets(
                lengths, e, e_down, e_up, valid_down, valid_up, self.oracle, cfg, l_min, l_max
            )
            gathered_idx = distr.all_gather_cat(self._bank_index(batch))
            self.bank.update(gathered_idx, distr.all_gather_cat(targets))
            if self.curves is not None:
                self.curves.update(
                    gathered_idx.repeat(3),
                    _gather_rows(all_lengths, b),
                    _gather_rows(errors.float(), b),
                )

        terms = self._loss(out, phase, batch)
        loss = terms.total
        probe_loss = None if terms.pixel is None else self.cfg.model.w_pixel * terms.pixel
        # The finite check and the stop flag stay on the device (all-reduced, so every rank
        # reads the same values) and are read on the next check (`check_pending`).
        finite_and_stop = torch.stack(
            [(~torch.isfinite(loss.detach())).float(), loss.new_full((), float(self._sigint))]
        ).float()
        distr.all_reduce_sum(finite_and_stop)
        self._pending_checks.append(
            PendingCheck(step, finite_and_stop, {k: v.detach() for k, v in terms.named().items()})
        )
        self.optimizer.zero_grad(set_to_none=True)
        # The probe's input is detached: its loss adds gradients to the pixel decoder only.
        (loss if probe_loss is None else loss + probe_loss).backward()
        if not cur.head_active(phase):
            for p in self.model.length_head_parameters():
                p.grad = None
        grad_norm, probe_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.model.update_codebook(out.gen, out.active)
            # the step's own generator: resumes bit for bit, and the global stream is untouched
            self.model.restart_dead_codes(out.gen, out.active, gen)

        head = cur.head_active(phase)
        return StepResult(
            phase=phase,
            loss=loss.detach(),
            align_loss=terms.align.detach(),
            commit_loss=terms.commit.detach(),
            diversity_loss=terms.diversity.detach(),
            grad_norm=grad_norm,
            mean_length=lengths.float().mean(),
            head_share=from_head.float().mean(),
            length_loss=_item(terms.length),
            pixel_loss=_item(terms.pixel),
            quality_curve_loss=_item(terms.quality),
            pixel_grad_norm=probe_norm,
            pred_length=out.l_hat.detach().float().mean() if head else None,
            oracle=oracle_stats,
        )

    def _bank_index(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's dataset indices (the banks' keys) on the device."""
        return to_device(torch.as_tensor(batch["bank_index"], dtype=torch.long), self.device)

    def _loss(
        self,
        out: ForwardResult,
        phase: int,
        batch: dict[str, Any],
    ) -> LossTerms:
        m = self.cfg.model
        b = out.l_hat.shape[0]
        align = out.errors[:b].mean()
        w_div = cur.diversity_weight(self.step, m.w_div, m.div_warmup_steps)
        loss = align + m.w_commit * out.commit_loss + w_div * out.diversity_loss
        length_loss = None
        if cur.head_active(phase):
            target, _ = self.bank.lookup(self._bank_index(batch))
            length_loss = losses.length_loss(out.l_hat, target, m.l_max)
            loss = loss + m.w_len * length_loss
        else:
            # Keeps the head in the graph (DDP needs every parameter used); no effect.
            loss = loss + 0.0 * out.l_hat.sum()
        quality_loss = None
        if out.quality_curve is not None and self.curves is not None:
            if cur.head_active(phase):
                log_target, mask = curve_targets(
                    self.curves, self._bank_index(batch), self.cfg.curriculum.quality_min_cells
                )
                quality_loss = curve_loss(out.quality_curve, log_target, mask)
                loss = loss + quality_loss
            else:  # in the graph for DDP, no effect (as the unconditioned head above)
                loss = loss + 0.0 * out.quality_curve.sum()
        # The pixel probe's loss stays out of `total`: it is stepped apart (module docstring).
        return LossTerms(
            total=loss,
            align=align,
            commit=out.commit_loss,
            diversity=out.diversity_loss,
            length=length_loss,
            pixel=out.pixel_loss,
            quality=quality_loss,
        )

    def _clip(self) -> tuple[torch.Tensor | float, torch.Tensor | float | None]:
        """Clip the tokenizer's gradients and the pixel probe's, each by its own norm; return
        both norms (the probe's None when it has no gradients). A non-finite probe gradient
        is zeroed on the device (no host read), so the probe's AdamW step moves it by its
        moments only and no NaN reaches its weights; the tokenizer's step is untouched."""
        probe_ids = {id(p) for p in self.model.pixel_decoder.parameters()}
        # The opt-in eps-conditioned head is clipped apart too: inside the tokenizer's norm
        # its gradient would change how much every other parameter is clipped.
        head = self.model.quality_head
        quality_ids = {id(p) for p in head.parameters()} if head is not None else set()
        params = [p for p in self.model.parameters() if p.grad is not None]
        tokenizer = [p for p in params if id(p) not in probe_ids | quality_ids]
        probe = [p for p in params if id(p) in probe_ids]
        norm = _clip_norm(tokenizer, self.cfg.train.grad_clip)
        _clip_norm([p for p in params if id(p) in quality_ids], self.cfg.train.grad_clip)
        if not probe:
            return norm, None
        probe_norm = _clip_norm(probe, self.cfg.train.grad_clip)
        if isinstance(probe_norm, torch.Tensor):
            not_finite = ~probe_norm.isfinite()
            for p in probe:
                if p.grad is not None:
                    p.grad.masked_fill_(not_finite, 0.0)
        return norm, probe_norm

    def check_pending(self) -> None:
        """Read the finite and stop flags of the steps since the last check (one host sync).
        Public for a caller that runs `train_step` itself (the bench), as `_loop` does on a
        log step.

        Raises `TrainingDiverged` for the first step whose loss was not finite; sets
        `_stop_requested` when any rank was interrupted. `_loop` checks on every log,
        validation and checkpoint step and at the end, so the check lags at most
        `train.log_every` steps and no checkpoint is written after a non-finite step."""
        pending, self._pending_checks = self._pending_checks, []
        if not pending:
            return
        flags = torch.stack([p.flags for p in pending]).tolist()
        for check, (bad, stop) in zip(pending, flags, strict=True):
            if bad > 0:
                self._diverged(check.step, check.terms)
            if stop > 0:
                self._stop_requested = True

    def _diverged(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        last = ckpt.checkpoints_dir(self.run.path) / ckpt.LAST
        kept = f"last good checkpoint {last}" if last.is_file() else "no checkpoint written yet"
        raise TrainingDiverged(
            f"step {step} (phase {cur.phase_at(step, self.cfg.curriculum)}): "
            f"non-finite loss ({values}); stopped without saving, {kept}"
        )

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Alignment (cos, R^2) and CB% on the validation split, with the lengths in use."""
        from strop.metrics import FieldStats, code_counts, codebook_usage
        from strop.model.length_head import round_lengths

        if self.val_loader is None:
            raise RuntimeError("validate: only the main process builds the validation loader")
        loader = self.val_loader
        m = self.cfg.model
        phase = cur.phase_at(self.step, self.cfg.curriculum)
        use_head = phase >= 4 and phase != cur.FIXED_PHASE
        stats, counts, lengths_seen = FieldStats(), np.zeros(m.k, dtype=np.int64), []
        self.model.eval()
        try:
            for i, batch in enumerate(train_data.loader_batches(loader)):
                if i >= self.cfg.train.val_batches:
                    break
                feats, _ = self._features(batch)
                with self._autocast():
                    gen = self.model.generate(feats)
                    if use_head:
                        lengths = round_lengths(self.model.predict_length(feats), m.l_min, m.l_max)
                    else:
                        lengths = torch.full((feats.shape[0],), m.l_max, device=self.device)
                    field = self.model.interpret_tokens(gen.tokens, lengths)
                stats.update(field.float().cpu().numpy(), feats.float().cpu().numpy())
                codes = gen.codes.masked_fill(~prefix_mask(lengths, m.l_max), -1)
                counts += code_counts(codes.cpu().numpy(), m.k)
                lengths_seen.append(lengths.float().cpu())
        finally:
            self.model.train()
        return {
            "val_cos": stats.cos,
            "val_r2": stats.r2,
            "val_cb": codebook_usage(counts)["cb_pct"],
            "val_length": float(torch.cat(lengths_seen).mean()),
        }

    # ------------------------------------------------------------------ loop

    def fit(self, stop_at: int | None = None) -> Path:
        """Train to `train.steps` (or stop, with a checkpoint, at `stop_at`)."""
        t = self.cfg.train
        end = min(t.steps, stop_at) if stop_at is not None else t.steps
        previous = self._install_sigint()
        try:
            bar = ProgressBar(
                self.progress,
                t.steps,
                self.step,
                label=f"train {self.run.name}",
                images_per_step=t.batch_size * self.dist.world_size,
            )
            with bar:
                self._loop(end, bar)
            if self.step >= end and self.dist.is_main:
                self.save()
        finally:
            self._restore_sigint(previous)
            self.metrics.close()
        distr.barrier()
        return self.run.path

    def _loop(self, end: int, bar: ProgressBar) -> None:
        t = self.cfg.train
        world_batch = t.batch_size * self.dist.world_size
        batches = self.batches()
        tick = time.perf_counter()
        while self.step < end:
            batch = next(batches)
            result = self.train_step(batch)
            self.step += 1
            self.metrics.add(result)
            if (
                self.step % t.log_every == 0
                or self.step % t.checkpoint_every == 0
                or (t.val_every and self.step % t.val_every == 0)
                or self.step in (t.steps, end)
            ):
                self.check_pending()  # before anything is logged, validated or saved
            # A stop before train.steps leaves the open interval to the checkpoint.
            if self.step % t.log_every == 0 or self.step == t.steps:
                elapsed = time.perf_counter() - tick
                tick = time.perf_counter()
                images_per_s = world_batch * self.metrics.interval_steps / max(elapsed, 1e-9)
                logged = self._log(images_per_s, result.phase)
                bar.update(self.step, logged)
                if self.on_log is not None:
                    self.on_log(self.step, logged)
            if t.val_every and self.step % t.val_every == 0:
                if self.val_loader is not None:
                    self._log_validation()
                distr.barrier()
            if self._stop_requested:
                self.save()
                distr.barrier()
                raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint written")
            if self.step % t.checkpoint_every == 0 and self.step < end:
                self.save()

    def _log(self, images_per_s: float, phase: int) -> dict[str, Any]:
        """Close the logging interval; `phase` is that of its last step."""
        m = self.cfg.model
        extra = {
            "lr": self.scheduler.get_last_lr()[0],
            "w_div": cur.diversity_weight(self.step - 1, m.w_div, m.div_warmup_steps),
            "images_per_s": images_per_s,
            # Model FLOP rate: fwd + bwd ~ 3x the analytic forward at L_max, per image. It
            # leaves out the teacher and the phase-2 probe rows, so it is a floor; `mfu` (CUDA,
            # bf16, a device in strop.training.mfu's table) adds the online teacher.
            "model_tflops": 3 * self.flops_per_image * images_per_s / 1e12,
            "bank_coverage": self.bank.coverage,
        }
        # Per device: the rate of one rank against one device's peak (None: not logged).
        share = mfu(
            images_per_s / self.dist.world_size, self.train_flops_per_image, self.peak_flops
        )
        if share is not None:
            extra["mfu"] = share
        return self.metrics.close_interval(self.step, phase, extra)

    def _log_validation(self) -> None:
        row: dict[str, float] = {
            "step": self.step,
            "phase": cur.phase_at(self.step - 1, self.cfg.curriculum),
        }
        row.update(self.validate())
        self.metrics.validation(row)

    # ------------------------------------------------------------------ signals

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def request_stop(signum: int, frame: Any) -> None:
            if self._sigint:  # a second Ctrl-C: stop now, checkpoint not guaranteed
                raise KeyboardInterrupt
            self._sigint = True

        return signal.signal(signal.SIGINT, request_stop)

    def _restore_sigint(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def train(
    cfg: RunConfig,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    stop_at: int | None = None,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
) -> Path:
    """Train (or resume) the run in `out_dir` with `cfg`; returns the run folder.

    `stop_at` ends this call at that step with a checkpoint, as an interruption would, without
    changing the schedule (which follows `cfg.train.steps`). The run folder is locked for the
    call (`strop.runs.RunLock`): a second training into it fails at once, naming this pid.
    `on_log(step, row)` is called with every logged interval row (see `Trainer`).
    A folder that holds runs (an experiment) is refused: a run inside it would hide them.
    """
    refuse_experiment_folder(Path(out_dir))
    # One training per run folder: rank 0 holds the lock (the other ranks only read).
    lock = RunLock(out_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    if lock is not None:
        lock.acquire()
    trainer: Trainer | None = None
    try:
        trainer = Trainer(cfg, out_dir, progress=progress, on_log=on_log)
        return trainer.fit(stop_at=stop_at)
    finally:
        # DDP's reducer holds the process group: drop it first, so that no gloo object is
        # torn down after the group (a rank could then wait forever on a peer that exited).
        del trainer
        distr.cleanup()
        if lock is not None:
            lock.release()


def refuse_experiment_folder(path: Path) -> None:
    """`RunFolderError` when `path` is not a run but holds runs (an experiment folder):
    training into it would make it one run, and `report` would then see that run alone."""
    if not path.is_dir() or is_run_folder(path):
        return
    runs = discover_runs(path)
    if runs:
        names = ", ".join(r.name for r in runs)
        raise RunFolderError(
            f"{path}: holds runs ({names}), so it is an experiment folder, not a run; "
            f"train into a folder of its own, e.g. --out {path / 'k<K>'}"
        )
