"""The STROP trainer: one flat, timed step; checkpoints; resume; faults; DDP.

    fetch batch -> teacher features (or cached) -> lengths (curriculum) -> forward (main +
    probes, one interpreter call) -> oracle targets -> loss -> finite check -> backward ->
    clip -> AdamW step -> EMA codebook update and dead-code restarts -> log / validate / save

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
- The pixel decoder (inspection only) learns from its own loss on the detached field, added to
  the total: its input is detached, so this equals a separate optimisation. With cached
  features and no images it is frozen instead.
- Randomness that must survive a resume: length sampling uses a generator seeded from
  (seed, rank, step), so it needs no saved state; data order comes from
  `ResumableSampler` (seeded per epoch) plus the count of batches consumed; the global
  Python/NumPy/torch RNG states are checkpointed; DataLoader worker seeds come from a
  dedicated generator, not the global one.
- Logged rows average the step values over the `log_every` interval; the interval sums are
  checkpointed, so a resumed run writes the same rows as a straight one (timings aside).
- Faults: a non-finite loss (agreed over ranks by one all-reduce) raises `TrainingDiverged`
  before `backward`, so the last checkpoint is never overwritten with bad weights. SIGINT sets
  a flag (also all-reduced, so every rank stops at the same step); the step finishes, a
  checkpoint is written, and `KeyboardInterrupt` propagates.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from strop import checkpoint as ckpt
from strop import curriculum as cur
from strop import distributed as distr
from strop import losses
from strop.config import ConfigError, RunConfig, load_run_config
from strop.curriculum import OracleState, TargetBank
from strop.interpreter import prefix_mask
from strop.runs import RunFolder, read_jsonl
from strop.scenes import atomic_write_text


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped without saving."""


# Fields that may change between a run and its resumption (they do not change the result).
_RESUMABLE_CHANGES = {
    "train.steps",
    "train.log_every",
    "train.val_every",
    "train.val_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.num_workers",
    "train.device",
    "train.compile",
    "data.path",
    "data.feature_cache",
}


# --------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup: int, hold: int, total: int, floor: float) -> float:
    """Warmup-hold-cosine multiplier of the peak lr at (0-based) `step`."""
    if step < warmup:
        return (step + 1) / warmup
    if step < hold:
        return 1.0
    progress = min(1.0, (step - max(hold, warmup)) / max(1, total - max(hold, warmup)))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    entropy = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


# --------------------------------------------------------------------------- forward


class TrainForward(nn.Module):
    """The differentiable part of a step (what DDP wraps and `torch.compile` compiles).

    `lengths` is (B,) or (3B,) = main, down and up probe lengths; the tokens are repeated to
    match and interpreted in one call. Returns a dict of tensors.
    """

    def __init__(self, model: nn.Module, w_mse: float) -> None:
        super().__init__()
        self.model = model
        self.w_mse = w_mse

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor, images: torch.Tensor | None
    ) -> dict[str, Any]:
        model, b = self.model, feats.shape[0]
        copies = lengths.shape[0] // b
        gen = model.generate(feats)
        tokens = gen.tokens.repeat(copies, 1, 1) if copies > 1 else gen.tokens
        target = feats.repeat(copies, 1, 1) if copies > 1 else feats
        field_all = model.interpret_tokens(tokens, lengths)
        errors = losses.align_error(field_all, target, self.w_mse)
        field = field_all[:b]
        active = prefix_mask(lengths[:b], gen.codes.shape[1])
        out = dict(model.quantizer_losses(gen, active))
        out.update(gen=gen, active=active, errors=errors, l_hat=model.predict_length(feats))
        if images is not None:
            # The probe may see only the first images of the batch (train.pixel_batch).
            recon = model.decode_pixels(field[: images.shape[0]])
            if images.shape[-2:] != recon.shape[-2:]:
                images = F.interpolate(images, size=recon.shape[-2:], mode="area")
            out["pixel_loss"] = losses.pixel_loss(recon, images)
        return out


# --------------------------------------------------------------------------- data


class _Indexed(Dataset):
    """Adds `bank_index` (position in the training set) to each item: the target-bank key."""

    def __init__(self, base: Dataset, limit: int | None = None) -> None:
        self.base = base
        self.size = min(len(base), limit) if limit else len(base)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        item["bank_index"] = i
        return item


def _build_dataset(cfg: RunConfig, split: str) -> tuple[Dataset, bool]:
    """The dataset of `split` and whether its items carry cached teacher features (`feats`).

    With `data.feature_cache`, images are loaded beside the features only when the pixel probe
    is trained (it needs them); `train.pixel_decoder=false` gives the cache's full speed.
    """
    from strop.data.datasets import build_dataset

    size = cfg.model.image_size
    if cfg.data.feature_cache:
        from strop.feature_cache import FeatureCacheDataset

        images = None
        if cfg.train.pixel_decoder and cfg.data.path:
            images = build_dataset(cfg.data.path, split, size)
        dataset = FeatureCacheDataset(cfg.data.feature_cache, split, images=images)
        dataset.check(cfg.model)
        return dataset, True
    return build_dataset(cfg.data.path, split, size), False


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The data area's `collate`, plus the keys it does not know (`bank_index`, `feats`)."""
    from strop.data.datasets import collate

    batch = collate(items) if "image" in items[0] else {}
    for key, value in items[0].items():
        if key in batch:
            continue
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack([it[key] for it in items])
        elif isinstance(value, int):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.long)
        else:
            batch[key] = [it[key] for it in items]
    return batch


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Owns the modules, optimiser, data and curriculum state of one run."""

    def __init__(self, cfg: RunConfig, out_dir: str | os.PathLike[str], progress: bool = True):
        from strop.model import build_model

        self.dist = distr.init_distributed(cfg.train.device)
        self.run = RunFolder(Path(out_dir))
        self.cfg = self._resolve_config(cfg)
        self.progress = progress and self.dist.is_main
        t, m, device = self.cfg.train, self.cfg.model, self.dist.device
        self.device = device
        self.use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        self.model = build_model(m).to(device)
        self.model.train()
        self.flops_per_image = self.model.flops_per_image()

        train_set, self.cached = _build_dataset(self.cfg, self.cfg.data.train_split)
        self.train_set = _Indexed(train_set, self.cfg.data.max_train_images)
        self.train_pixels = t.pixel_decoder and "image" in self.train_set[0]
        if not self.train_pixels:
            self.model.pixel_decoder.requires_grad_(False)
        self.sampler = distr.ResumableSampler(
            len(self.train_set), self.dist.rank, self.dist.world_size, seed=t.seed
        )
        self.batches_per_epoch = self.sampler.per_rank // t.batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"{self.cfg.data.path}: {self.sampler.per_rank} training images per process, "
                f"fewer than train.batch_size={t.batch_size}"
            )
        self.loader_gen = torch.Generator()
        self.loader = DataLoader(
            self.train_set,
            batch_size=t.batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=t.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=t.num_workers > 0,
            collate_fn=_collate,
            generator=self.loader_gen,
        )
        self.val_loader = self._val_loader() if self.dist.is_main else None

        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_lambdas())
        self.oracle = OracleState()
        self.bank = TargetBank(len(self.train_set), self.cfg.curriculum.target_ema_decay)
        self.step = 0  # steps completed
        self.epoch = 0
        self.batch_in_epoch = 0
        self.interval: dict[str, float] = defaultdict(float)
        self._resume()

        forward: nn.Module = TrainForward(self.model, m.w_mse)
        if self.dist.distributed:
            forward = nn.parallel.DistributedDataParallel(
                forward,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.forward = torch.compile(forward) if t.compile else forward
        self.tb = self._tensorboard() if t.tensorboard and self.dist.is_main else None
        self._sigint = False  # set by the signal handler, local to this process
        self._stop_requested = False  # agreed by all ranks after each step

    # ------------------------------------------------------------------ set-up helpers

    def _resolve_config(self, cfg: RunConfig) -> RunConfig:
        """A fresh run writes config.json; a resumed run checks the new config against it."""
        if not ckpt.has_checkpoint(self.run.path):
            if self.dist.is_main:
                self.run.path.mkdir(parents=True, exist_ok=True)
                self.run.write_config(cfg.model_dump(mode="json"))
            return cfg
        stored = load_run_config(self.run.path)
        diffs = _diff(stored.model_dump(mode="json"), cfg.model_dump(mode="json"))
        fixed = [d for d in diffs if d[0] not in _RESUMABLE_CHANGES]
        if fixed:
            key, old, new = fixed[0]
            raise ConfigError(
                f"{self.run.config_path}: cannot resume with {key}={new!r}, the run was started "
                f"with {old!r} ({len(fixed)} such difference(s)); use a new --out folder"
            )
        if diffs and self.dist.is_main:
            self.run.write_config(cfg.model_dump(mode="json"))
        return cfg

    def _val_loader(self) -> DataLoader | None:
        split = self.cfg.data.val_split
        if not split or not self.cfg.train.val_every:
            return None
        try:
            val_set, _ = _build_dataset(self.cfg, split)
        except (FileNotFoundError, ValueError):
            return None  # no validation split in this dataset
        if len(val_set) == 0:
            return None
        return DataLoader(
            val_set, batch_size=self.cfg.train.batch_size, shuffle=False, collate_fn=_collate
        )

    def _lr_lambdas(self) -> list[Any]:
        """Warmup-hold-cosine for the model; the length head keeps its peak rate.

        The head first trains in phase 3, when the cosine has already started to decay; a
        decayed rate leaves it regressing to the mean target instead of following the
        per-image targets, so its group is exempt (`train.head_lr_mult` sets its rate).
        """
        t = self.cfg.train

        def main(step: int) -> float:
            return lr_factor(step, t.warmup_steps, t.hold_steps, t.steps, t.min_lr_ratio)

        def head(step: int) -> float:
            return 1.0 if t.head_constant_lr else main(step)

        return [main] * (len(self.optimizer.param_groups) - 1) + [head]

    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        head = {id(p) for p in self.model.length_head.parameters()}
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": t.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            # Last group: the length head (see `_lr_lambdas`).
            {"params": list(self.model.length_head.parameters()), "weight_decay": 0.0,
             "lr": t.lr * t.head_lr_mult},
        ]  # fmt: skip
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, fused=fused)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package (pip install tensorboard)"
            ) from None
        return SummaryWriter(str(self.run.path / "tensorboard"))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": ckpt.CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "curriculum": {"oracle": self.oracle.to_dict(), "bank": self.bank.state_dict()},
            "data": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "interval": dict(self.interval),
            "rng": ckpt.rng_state(),
        }

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        path = ckpt.save_checkpoint(
            self.run.path, self.step, self.state_dict(), self.cfg.train.keep_checkpoints
        )
        if self.tb is not None:
            self.tb.flush()
        return path

    def _resume(self) -> None:
        if not ckpt.has_checkpoint(self.run.path):
            return
        state = ckpt.load_checkpoint(ckpt.resolve_checkpoint(self.run.path), "cpu")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.oracle = OracleState.from_dict(state["curriculum"]["oracle"])
        self.bank.load_state_dict(state["curriculum"]["bank"])
        self.step = int(state["step"])
        self.epoch = int(state["data"]["epoch"])
        self.batch_in_epoch = int(state["data"]["batch_in_epoch"])
        self.interval = defaultdict(float, state.get("interval", {}))
        if self.dist.is_main:
            ckpt.set_rng_state(state["rng"])
            self._truncate_metrics()
        else:
            torch.manual_seed(self.cfg.train.seed + 7919 * self.dist.rank + self.step)

    def _truncate_metrics(self) -> None:
        """Drop metric rows written after the checkpoint, so a resumed run does not repeat."""
        rows = read_jsonl(self.run.metrics_path)
        kept = [r for r in rows if r.get("step", 0) <= self.step]
        if len(kept) != len(rows):
            import json

            atomic_write_text(self.run.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ------------------------------------------------------------------ the step

    def _batches(self):
        """Endless batches, continuing at (epoch, batch_in_epoch)."""
        b = self.cfg.train.batch_size
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch * b)
            self.loader_gen.manual_seed(self.cfg.train.seed * 1_000_003 + self.epoch)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
                if self.batch_in_epoch >= self.batches_per_epoch:
                    break
            self.epoch += 1
            self.batch_in_epoch = 0

    def _autocast(self):
        if not self.use_bf16:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        images = batch.get("image")
        if images is not None:
            images = images.to(self.device, non_blocking=True)
        if self.cached:
            feats = batch["feats"].to(self.device, non_blocking=True).float()
        else:
            with torch.no_grad(), self._autocast():
                feats = self.model.teacher_features(images).float()
        if not self.train_pixels or images is None:
            return feats, None
        return feats, images[: self.cfg.train.pixel_batch or None]

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
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
        all_lengths = lengths
        if cur.oracle_active(phase):
            down, up, valid_down, valid_up = cur.probe_lengths(
                lengths, cfg.probe_radius, l_min, l_max
            )
            all_lengths = torch.cat([lengths, down, up])

        with self._autocast():
            out = self.forward(feats, all_lengths.to(self.device), images)
        errors = out["errors"].detach()
        row: dict[str, float] = {}
        if cur.oracle_active(phase):
            e, e_down, e_up = errors.float().split(b)
            targets, self.oracle, stats = cur.oracle_targets(
                lengths, e, e_down, e_up, valid_down, valid_up, self.oracle, cfg, l_min, l_max
            )
            index = batch["bank_index"]
            index = torch.as_tensor(index, dtype=torch.long)
            gathered_idx = distr.all_gather_cat(index.to(self.device)).cpu()
            gathered_t = distr.all_gather_cat(targets.to(self.device)).cpu()
            self.bank.update(gathered_idx, gathered_t)
            row.update(stats)

        loss, terms = self._loss(out, phase, batch)
        finite_and_stop = torch.tensor(
            [float(not torch.isfinite(loss)), float(self._sigint)], device=self.device
        )
        distr.all_reduce_sum(finite_and_stop)
        if finite_and_stop[0] > 0:
            self._diverged(terms)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not cur.head_active(phase):
            for p in self.model.length_head.parameters():
                p.grad = None
        grad_norm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.model.update_codebook(out["gen"], out["active"])
            self.model.restart_dead_codes(out["gen"], out["active"])
        # Every rank sees the same all-reduced flag, so all of them stop after this step.
        self._stop_requested = bool(finite_and_stop[1] > 0)

        row.update({k: float(v) for k, v in terms.items()})
        row["grad_norm"] = grad_norm
        row["mean_length"] = float(lengths.float().mean())
        row["head_share"] = float(from_head.float().mean())
        if cur.head_active(phase):
            row["pred_length"] = float(out["l_hat"].detach().float().mean())
        return row

    def _loss(
        self, out: dict[str, Any], phase: int, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = self.cfg.model
        b = out["l_hat"].shape[0]
        terms = {
            "align_loss": out["errors"][:b].mean(),
            "commit_loss": out["commit_loss"],
            "diversity_loss": out["diversity_loss"],
        }
        w_div = cur.diversity_weight(self.step, m.w_div, m.div_warmup_steps)
        loss = (
            terms["align_loss"]
            + m.w_commit * terms["commit_loss"]
            + w_div * terms["diversity_loss"]
        )
        if cur.head_active(phase):
            target, _ = self.bank.lookup(torch.as_tensor(batch["bank_index"]))
            terms["length_loss"] = losses.length_loss(out["l_hat"], target.to(self.device), m.l_max)
            loss = loss + m.w_len * terms["length_loss"]
        else:
            # Keeps the head in the graph (DDP needs every parameter used); no effect.
            loss = loss + 0.0 * out["l_hat"].sum()
        if "pixel_loss" in out:
            terms["pixel_loss"] = out["pixel_loss"]
            loss = loss + m.w_pixel * out["pixel_loss"]
        terms["loss"] = loss
        return loss, {k: v.detach() for k, v in terms.items()}

    def _clip(self) -> float:
        clip = self.cfg.train.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, clip))
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))

    def _diverged(self, terms: dict[str, torch.Tensor]) -> None:
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        last = ckpt.checkpoints_dir(self.run.path) / ckpt.LAST
        kept = f"last good checkpoint {last}" if last.is_file() else "no checkpoint written yet"
        raise TrainingDiverged(
            f"step {self.step} (phase {cur.phase_at(self.step, self.cfg.curriculum)}): "
            f"non-finite loss ({values}); stopped without saving, {kept}"
        )

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Alignment (cos, R^2) and CB% on the validation split, with the lengths in use."""
        from strop.length_head import round_lengths
        from strop.metrics import FieldStats, code_counts, codebook_usage

        m = self.cfg.model
        phase = cur.phase_at(self.step, self.cfg.curriculum)
        use_head = phase >= 4 and phase != cur.FIXED_PHASE
        stats, counts, lengths_seen = FieldStats(), np.zeros(m.k, dtype=np.int64), []
        self.model.eval()
        try:
            for i, batch in enumerate(self.val_loader):
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
            with _ProgressBar(self.progress, t.steps, self.step) as bar:
                self._loop(end, bar)
            if self.step >= end and self.dist.is_main:
                self.save()
        finally:
            self._restore_sigint(previous)
            if self.tb is not None:
                self.tb.close()
        distr.barrier()
        return self.run.path

    def _loop(self, end: int, bar: _ProgressBar) -> None:
        t = self.cfg.train
        world_batch = t.batch_size * self.dist.world_size
        batches = self._batches()
        tick = time.perf_counter()
        while self.step < end:
            batch = next(batches)
            row = self.train_step(batch)
            self.step += 1
            for key, value in row.items():
                self.interval[key] += value
            self.interval["_n"] += 1
            # A stop before train.steps leaves the open interval to the checkpoint.
            if self.step % t.log_every == 0 or self.step == t.steps:
                elapsed = time.perf_counter() - tick
                tick = time.perf_counter()
                logged = self._log(world_batch * self.interval["_n"] / max(elapsed, 1e-9))
                bar.update(self.step, logged)
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

    def _log(self, images_per_s: float) -> dict[str, float]:
        n = self.interval.pop("_n")
        row: dict[str, Any] = {
            "step": self.step,
            "phase": cur.phase_at(self.step - 1, self.cfg.curriculum),
        }
        row.update({k: v / n for k, v in sorted(self.interval.items())})
        row["lr"] = self.scheduler.get_last_lr()[0]
        row["w_div"] = cur.diversity_weight(
            self.step - 1, self.cfg.model.w_div, self.cfg.model.div_warmup_steps
        )
        row["images_per_s"] = images_per_s
        # Model FLOP rate: fwd + bwd ~ 3x the analytic forward at L_max, per image. It leaves
        # out the teacher and the phase-2 probe rows, so it is a floor, not an MFU claim.
        row["model_tflops"] = 3 * self.flops_per_image * images_per_s / 1e12
        row["bank_coverage"] = self.bank.coverage
        self.interval = defaultdict(float)
        if self.dist.is_main:
            self.run.append_metrics(row)
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step":
                        self.tb.add_scalar(k, v, self.step)
        return row

    def _log_validation(self) -> None:
        row = {"step": self.step, "phase": cur.phase_at(self.step - 1, self.cfg.curriculum)}
        row.update(self.validate())
        self.run.append_metrics(row)
        if self.tb is not None:
            for k, v in row.items():
                if k.startswith("val_"):
                    self.tb.add_scalar(k, v, self.step)

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


class _ProgressBar:
    """A rich progress bar with step, phase, losses, mean length and img/s (rank 0 only)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self.progress: Any = None

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
            )
            self.progress.start()
            self.task = self.progress.add_task("", total=self.total, completed=self.done)
        return self

    def update(self, step: int, row: dict[str, float]) -> None:
        if self.progress is None:
            return
        losses_text = " ".join(
            f"{k.removesuffix('_loss')}={row[k]:.3f}" for k in row if k.endswith("loss")
        )
        text = (
            f"phase {row['phase']} ({cur.PHASE_NAMES[row['phase']]}) {losses_text} "
            f"L={row['mean_length']:.1f} {row['images_per_s']:.0f} img/s"
        )
        self.progress.update(self.task, completed=step, description=text)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def train(
    cfg: RunConfig,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    stop_at: int | None = None,
) -> Path:
    """Train (or resume) the run in `out_dir` with `cfg`; returns the run folder.

    `stop_at` ends this call at that step with a checkpoint, as an interruption would, without
    changing the schedule (which follows `cfg.train.steps`).
    """
    trainer = Trainer(cfg, out_dir, progress=progress)
    try:
        return trainer.fit(stop_at=stop_at)
    finally:
        distr.cleanup()
