"""The quickstart's runs on screen: one bar per run, and one line as each run ends.

The board draws what the runs report (`RunEvent`s: a stage begins, a training interval was
logged, the run is done, failed or was interrupted), whether they run in this process or in
worker processes, so the screen is the same for every `--jobs`. Bars are transient: when the
stage ends, the lines of the finished runs stay, the bars go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.progress import TaskID

from strop.training.log import describe_row, step_progress

EventKind = Literal["stage", "step", "done", "failed", "interrupted"]


@dataclass(frozen=True)
class RunEvent:
    """What one run reports: `stage` (text: what it does now), `step` (step and logged row),
    `done` (text: its summary line), `failed` / `interrupted` (text: one line why)."""

    run: str
    kind: EventKind
    text: str = ""
    step: int = 0
    row: dict[str, Any] = field(default_factory=dict)


_ENDINGS = {"done": ("green", "done"), "failed": ("red", "failed"), "interrupted": ("yellow", "")}


class RunBoard:
    """Rich progress with one task per run; `handle` applies a `RunEvent` to it."""

    def __init__(self, runs: list[str], total_steps: int, console: Console) -> None:
        width = max(len(r) for r in runs)
        self.progress = step_progress(f"[bold]{{task.fields[run]:<{width}}}", console)
        self.tasks: dict[str, TaskID] = {
            run: self.progress.add_task("waiting", total=total_steps, run=run, rate="")
            for run in runs
        }

    def __enter__(self) -> RunBoard:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        """A line above the bars."""
        self.progress.console.print(text, highlight=False, soft_wrap=True)

    def handle(self, event: RunEvent) -> None:
        task = self.tasks.get(event.run)
        if task is None:
            return
        if event.kind == "stage":
            self.progress.update(task, description=event.text)
        elif event.kind == "step":
            rate = f"{event.row['images_per_s']:.0f} img/s" if "images_per_s" in event.row else ""
            self.progress.update(
                task, completed=event.step, rate=rate, description=describe_row(event.row)
            )
        else:
            colour, word = _ENDINGS[event.kind]
            label = f"{event.run} {word}:" if word else f"{event.run}:"
            self.note(f"[{colour}]{escape(label)}[/] {escape(event.text)}")
            self.progress.remove_task(task)
            del self.tasks[event.run]
