"""The trainer's logging: the step's result, interval-averaged metric rows, TensorBoard, and
the progress bar.

Design decisions
- A training step reports a typed `StepResult` (host floats, None for terms its phase does not
  have); `StepResult.metrics()` is the one place its field names become metrics.jsonl keys.
- Logged rows average the step values over the `log_every` interval; the interval sums (and
  their count, `_n`) are checkpointed, so a resumed run writes the same rows as a straight one
  (timings aside).
- `metrics.jsonl` always holds exactly the rows of one straight run up to the checkpoint a
  run resumes from: on resume, rows after the checkpoint's step and torn or unreadable lines
  (a kill or a full disk mid-write) are dropped before anything is appended; a run with no
  checkpoint starts the log afresh, moving an earlier file aside (`metrics.jsonl.old`, never
  deleted). Otherwise a crash before the first checkpoint, or a torn row, would repeat steps
  or make every later resume fail.
- A step's values may stay on the device (0-d tensors): `MetricLog.add` keeps them pending
  and reads them back in one transfer when the interval closes or is checkpointed, so a step
  does not wait for the GPU to report its losses. The values are summed on the host in step
  order exactly as before (each read as the float it is), so the rows do not change.
- Only rank 0 writes metrics, TensorBoard scalars and the progress bar. TensorBoard is optional
  (`train.tensorboard`) and needs its package only when asked for.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from strop.atomic import atomic_write_text
from strop.runs.folder import RunFolder
from strop.training import curriculum as cur
from strop.training.config import ConfigError
from strop.training.curriculum import OracleStats

#: A step value: a host float, or a 0-d tensor still on the device (read at log time).
Scalar = float | torch.Tensor


@dataclass(frozen=True)
class StepResult:
    """What one training step (`Trainer.train_step`) reports: floats, or 0-d device tensors
    that `MetricLog` reads back on log steps only.

    Optional fields are None in the phases that do not have them; `metrics()` leaves them out
    of the row, so an interval that mixes phases averages them over all its steps, as before.
    """

    phase: int
    """Curriculum phase of the step (1-5; 0 for fixed-length training)."""
    loss: Scalar
    """The tokenizer's total, weighted loss (the pixel probe's loss is stepped apart)."""
    align_loss: Scalar
    """Alignment error of the main rows, `1 - cos + w_mse * mse` (unweighted)."""
    commit_loss: Scalar
    """Commitment loss over active positions (unweighted)."""
    diversity_loss: Scalar
    """Diversity loss over active positions (unweighted)."""
    grad_norm: Scalar
    """The tokenizer's gradient norm before clipping (the pixel probe's is apart)."""
    mean_length: Scalar
    """Mean program length the interpreter read."""
    head_share: Scalar
    """Share of the batch truncated at the head's prediction (phase 4 on)."""
    length_loss: Scalar | None = None
    """Length-head regression loss (phase 3 on)."""
    pixel_loss: Scalar | None = None
    """Pixel probe loss (when the probe trains on images)."""
    pixel_grad_norm: Scalar | None = None
    """The pixel probe's own gradient norm before its own clipping (when it trains)."""
    pred_length: Scalar | None = None
    """Mean predicted length L_hat (phase 3 on)."""
    oracle: OracleStats | None = None
    """Oracle statistics (phase 2 on)."""
    quality_curve_loss: Scalar | None = None
    """The eps-conditioned length head's loss (`model.quality_head`, phase 3 on)."""

    def metrics(self) -> dict[str, Scalar]:
        """The step's values under their metrics.jsonl keys (`phase` is the row's own)."""
        row: dict[str, Scalar] = dict(self.oracle.metrics()) if self.oracle is not None else {}
        row.update(
            align_loss=self.align_loss,
            commit_loss=self.commit_loss,
            diversity_loss=self.diversity_loss,
        )
        if self.length_loss is not None:
            row["length_loss"] = self.length_loss
        if self.pixel_loss is not None:
            row["pixel_loss"] = self.pixel_loss
        row.update(
            loss=self.loss,
            grad_norm=self.grad_norm,
            mean_length=self.mean_length,
            head_share=self.head_share,
        )
        if self.pixel_grad_norm is not None:
            row["pixel_grad_norm"] = self.pixel_grad_norm
        if self.pred_length is not None:
            row["pred_length"] = self.pred_length
        if self.quality_curve_loss is not None:
            row["quality_curve_loss"] = self.quality_curve_loss
        return row


class MetricLog:
    """Sums step values over the open interval and writes interval and validation rows."""

    def __init__(self, run: RunFolder, write: bool) -> None:
        self.run, self.write = run, write
        self.interval: dict[str, float] = defaultdict(float)
        self.pending: list[dict[str, Scalar]] = []  # steps whose values are not read yet
        self.tb: Any = None

    def open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package (pip install tensorboard)"
            ) from None
        self.tb = SummaryWriter(str(self.run.path / "tensorboard"))

    def add(self, result: StepResult) -> None:
        """Add one step's values to the open interval (device values are read later)."""
        self.pending.append(result.metrics())

    def _read_pending(self) -> None:
        """Read the pending steps' device values in one transfer and sum them in step order."""
        tensors = [v for row in self.pending for v in row.values() if isinstance(v, torch.Tensor)]
        # float64 holds every float32 exactly: the host sees the very floats `float(v)` gave.
        values = iter(torch.stack([t.double() for t in tensors]).tolist() if tensors else [])
        for row in self.pending:
            for key, value in row.items():
                self.interval[key] += next(values) if isinstance(value, torch.Tensor) else value
            self.interval["_n"] += 1
        self.pending = []

    @property
    def interval_steps(self) -> float:
        return self.interval["_n"] + len(self.pending)

    def close_interval(self, step: int, phase: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write the row of the interval ending at `step` (means, then `extra`); start anew."""
        self._read_pending()
        n = self.interval.pop("_n")
        row: dict[str, Any] = {"step": step, "phase": phase}
        row.update({k: v / n for k, v in sorted(self.interval.items())})
        row.update(extra)
        self.interval = defaultdict(float)
        if self.write:
            self.run.append_metrics(row)
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step":
                        self.tb.add_scalar(k, v, step)
        return row

    def validation(self, row: dict[str, Any]) -> None:
        self.run.append_metrics(row)
        if self.tb is not None:
            for k, v in row.items():
                if k.startswith("val_"):
                    self.tb.add_scalar(k, v, row["step"])

    def event(self, step: int, name: str, **fields: Any) -> None:
        """Write a one-off row (`event`: what happened, at `step`), e.g. validation turned off."""
        if self.write:
            self.run.append_metrics({"step": step, "event": name, **fields})

    def state_dict(self) -> dict[str, float]:
        self._read_pending()
        return dict(self.interval)

    def load_state_dict(self, interval: dict[str, float]) -> None:
        self.interval = defaultdict(float, interval)
        self.pending = []

    def truncate(self, step: int) -> str | None:
        """Keep only the rows up to `step` (the checkpoint resumed from), dropping later rows
        and torn or unreadable lines; returns a note when something was dropped."""
        path = self.run.metrics_path
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
        kept, later, torn = [], 0, 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if not isinstance(row, dict):
                torn += 1
            elif row.get("step", 0) > step:
                later += 1
            else:
                kept.append(line)
        rebuilt = "".join(line + "\n" for line in kept)
        if rebuilt == text:
            return None
        atomic_write_text(path, rebuilt)
        return f"{path}: kept {len(kept)} rows up to step {step}, dropped {later} later rows" + (
            f" and {torn} torn line(s)" if torn else ""
        )

    def start_afresh(self) -> str | None:
        """No checkpoint: rows from an earlier attempt are moved aside; returns a note."""
        path = self.run.metrics_path
        if not path.is_file():
            return None
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            path.unlink()
            return None
        aside = _free_name(path.with_name(path.name + ".old"))
        path.rename(aside)
        return f"{path}: no checkpoint to resume from; earlier rows moved to {aside.name}"

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _free_name(path: Path) -> Path:
    """`path`, or `path.2`, `path.3`, ...: the first name not taken."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def step_progress(label: str, console: Any, *, eta_label: bool = False) -> Any:
    """The display of training steps (a rich `Progress`, not started): `label` (a column
    format: "[bold]k16" or one naming a task field), steps done of total, the rate in the
    task field `rate`, the time left, a bar, and the last logged row as the description.

    Shared by a training's own bar (`ProgressBar`) and `strop quickstart`'s board of runs."""
    from rich import progress as rp
    from rich.table import Column

    return rp.Progress(
        rp.TextColumn(label),
        rp.MofNCompleteColumn(),
        rp.TextColumn("{task.fields[rate]}"),
        *([rp.TextColumn("ETA")] if eta_label else []),
        rp.TimeRemainingColumn(),
        rp.BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5, max_width=24)),
        rp.TextColumn(
            "{task.description}", table_column=Column(ratio=3, no_wrap=True, overflow="ellipsis")
        ),
        console=console,
        expand=True,
        transient=True,
    )


class ProgressBar:
    """The training bar (rank 0 only), and one line per finished call.

    The columns that say whether the run is moving (steps done / total, images/s, time left)
    come first and keep their width at any terminal width; the bar and the metrics (phase as
    the paper names it, loss terms, mean length) share what is left and are cut with an
    ellipsis, so an 80-column terminal still shows progress. The bar is transient: when the
    call ends it is replaced by one line with the final loss, the time taken and images/s.
    """

    def __init__(
        self,
        enabled: bool,
        total: int,
        done: int,
        label: str = "train",
        images_per_step: int = 0,
        console: Any = None,
    ) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self.label, self.images_per_step, self.console = label, images_per_step, console
        self.progress: Any = None
        self.last: dict[str, Any] = {}
        self.step = done
        self.started = 0.0

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self.progress = step_progress(f"[bold]{self.label}", self.console, eta_label=True)
            self.progress.start()
            self.started = time.perf_counter()
            self.task = self.progress.add_task(
                "", total=self.total, completed=self.done, rate="- img/s"
            )
        return self

    def update(self, step: int, row: dict[str, Any]) -> None:
        self.step, self.last = step, row
        if self.progress is None:
            return
        rate = f"{row['images_per_s']:.0f} img/s"
        self.progress.update(self.task, completed=step, description=describe_row(row), rate=rate)

    def summary(self, elapsed: float) -> str:
        """The line left on screen when the call ends."""
        stopped = "stopped at " if self.step < self.total else ""
        line = (
            f"{self.label}: {stopped}{self.step}/{self.total} steps in {format_duration(elapsed)}"
        )
        if self.images_per_step and elapsed > 0:
            rate = (self.step - self.done) * self.images_per_step / elapsed
            line += f", {rate:.0f} img/s"
        if self.last:
            line += (
                f"; final loss {self.last['loss']:.3f}, mean length {self.last['mean_length']:.1f}"
            )
        return line

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress.console.print(
                self.summary(time.perf_counter() - self.started), highlight=False, soft_wrap=True
            )


def describe_row(row: dict[str, Any]) -> str:
    """One logged interval row as the progress bar's text: phase, loss, mean length, terms."""
    # The total loss and the mean length first: the terms are for a reader with room.
    terms = " ".join(f"{k.removesuffix('_loss')}={row[k]:.3f}" for k in row if k.endswith("_loss"))
    text = (
        f"{cur.phase_label(row['phase'])} loss={row['loss']:.3f} L={row['mean_length']:.1f} {terms}"
    )
    if row.get("mfu") is not None:
        text += f" MFU {100 * row['mfu']:.0f}%"
    return text


def format_duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
