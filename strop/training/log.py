"""The trainer's logging: interval-averaged metric rows, TensorBoard, and the progress bar.

Design decisions
- Logged rows average the step values over the `log_every` interval; the interval sums (and
  their count, `_n`) are checkpointed, so a resumed run writes the same rows as a straight one
  (timings aside).
- On resume, metric rows written after the checkpoint are dropped from `metrics.jsonl`, so a
  resumed run does not repeat them.
- Only rank 0 writes metrics, TensorBoard scalars and the progress bar. TensorBoard is optional
  (`train.tensorboard`) and needs its package only when asked for.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from strop.runs import RunFolder, read_jsonl
from strop.scenes import atomic_write_text
from strop.training import curriculum as cur
from strop.training.config import ConfigError


class MetricLog:
    """Sums step values over the open interval and writes interval and validation rows."""

    def __init__(self, run: RunFolder, write: bool) -> None:
        self.run, self.write = run, write
        self.interval: dict[str, float] = defaultdict(float)
        self.tb: Any = None

    def open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package (pip install tensorboard)"
            ) from None
        self.tb = SummaryWriter(str(self.run.path / "tensorboard"))

    def add(self, row: dict[str, float]) -> None:
        """Add one step's values to the open interval."""
        for key, value in row.items():
            self.interval[key] += value
        self.interval["_n"] += 1

    @property
    def interval_steps(self) -> float:
        return self.interval["_n"]

    def close_interval(self, step: int, phase: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write the row of the interval ending at `step` (means, then `extra`); start anew."""
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

    def state_dict(self) -> dict[str, float]:
        return dict(self.interval)

    def load_state_dict(self, interval: dict[str, float]) -> None:
        self.interval = defaultdict(float, interval)

    def truncate(self, step: int) -> None:
        """Drop metric rows written after `step`, so a resumed run does not repeat them."""
        path = self.run.metrics_path
        rows = read_jsonl(path)
        kept = [r for r in rows if r.get("step", 0) <= step]
        if len(kept) != len(rows):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class ProgressBar:
    """A rich progress bar with step, phase, losses, mean length and img/s (rank 0 only)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self.progress: Any = None

    def __enter__(self) -> ProgressBar:
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
