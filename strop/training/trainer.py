"""The STROP trainer: one flat, timed step; checkpoints; resume; faults; DDP.

    fetch batch -> teacher features (or cached) -> lengths (curriculum) -> forward (main +
    probes, one interpreter call) -> oracle targets -> loss -> finite check -> backward ->
    clip -> AdamW step -> EMA codebook update and dead-code restarts -> log / validate / save

The ideas around the step live beside it in `strop.training`: `data` (datasets, loaders,
data position), `optim` (AdamW groups, warmup-hold-cosine schedule), `log` (the typed
`StepResult`, interval rows, TensorBoard, progress bar), `resume` (which config changes a
resume accepts), `checkpoint` and `curriculum` (phases, lengths, oracle, target bank),
`step` (the step's differentiable forward `TrainForward`, its loss terms, gradient clipping)
and `validation` (the validation split's alignment and codebook usage).

Design decisions
- `TrainForward` (`strop.training.step`) is the unit that DDP wraps and `torch.compile`
  compiles, the phase-2 probes batched with the main rows; the codebook EMA update and
  dead-code restarts are called after it, outside any compiled region.
- The loss terms, the pixel probe stepped apart from the tokenizer, and gradient clipping:
  `strop.training.step` (its docstring says how the two objectives stay separate).
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

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
from strop.training.resume import record_config, resolve_config
from strop.training.step import (
    ForwardResult,
    LossTerms,
    PendingCheck,
    TrainForward,
    clip_gradients,
    gather_rows,
    step_generator,
    step_loss,
    step_value,
)
from strop.training.validation import validate_split

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

#: Training images the mean field of `model.residual_targets` is averaged over (evenly spaced):
#: enough for a mean to settle, bounded so that an online teacher on a large set costs little.
MEAN_FIELD_IMAGES = 8192


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped without saving."""


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
        if m.residual_targets and self.step == 0:  # a resumed run has it in its checkpoint
            self.model.set_field_mean(self._train_mean_field())
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

    @torch.no_grad()
    def _train_mean_field(self) -> torch.Tensor:
        """The mean teacher field (P, D) over the training set (at most `MEAN_FIELD_IMAGES`,
        evenly spaced), computed once before training for `model.residual_targets`. Every rank
        reads the same images, so every rank gets the same mean without a collective."""
        n = len(self.train_set)
        picked = range(0, n, max(1, -(-n // MEAN_FIELD_IMAGES)))
        loader = DataLoader(
            Subset(self.train_set, list(picked)),
            batch_size=self.cfg.train.batch_size,
            collate_fn=train_data.collate,
            generator=torch.Generator(),  # its base seed is not drawn from the global RNG
        )
        total: torch.Tensor | None = None
        for batch in train_data.loader_batches(loader):
            feats = self._features(batch)[0].double().sum(dim=0)
            total = feats if total is None else total + feats
        assert total is not None  # TrainData refused an empty training set
        return (total / len(picked)).float()

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
        gen = step_generator(self.cfg.train.seed, self.dist.rank, step)

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
                    gather_rows(all_lengths, b),
                    gather_rows(errors.float(), b),
                )

        terms = step_loss(
            out,
            phase,
            self.step,
            self.cfg,
            self.bank,
            self.curves,
            lambda: self._bank_index(batch),
        )
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
        grad_norm, probe_norm = clip_gradients(self.model, self.cfg.train.grad_clip)
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
            length_loss=step_value(terms.length),
            pixel_loss=step_value(terms.pixel),
            quality_curve_loss=step_value(terms.quality),
            pixel_grad_norm=probe_norm,
            pred_length=out.l_hat.detach().float().mean() if head else None,
            oracle=oracle_stats,
        )

    def _bank_index(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's dataset indices (the banks' keys) on the device."""
        return to_device(torch.as_tensor(batch["bank_index"], dtype=torch.long), self.device)

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

    def validate(self) -> dict[str, float]:
        """Alignment (cos, R^2) and CB% on the validation split, with the lengths in use."""
        if self.val_loader is None:
            raise RuntimeError("validate: only the main process builds the validation loader")
        phase = cur.phase_at(self.step, self.cfg.curriculum)
        return validate_split(
            self.model,
            self.cfg.model,
            train_data.loader_batches(self.val_loader),
            self.cfg.train.val_batches,
            lambda batch: self._features(batch)[0],
            use_head=phase >= 4 and phase != cur.FIXED_PHASE,
            autocast=self._autocast,
        )

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
