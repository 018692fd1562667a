"""Stages 2-4 of the quickstart, run by run: train, export programs, evaluate, analyse.

The runs are independent (each its own folder and seeds; the rendered data is only read), so
they run side by side: `jobs` worker processes, one run each at a time, every one with torch on
`threads` intra-op threads. A run's arithmetic then does not depend on `jobs`, and its files
are bit-identical whether the runs go one after the other or side by side
(`tests/test_quickstart.py` compares `jobs` 1 and 2 byte for byte). With one job the runs go
in this process, one after the other, as they did before there were workers.

Design decisions
- Workers are spawned, not forked: the parent already holds torch's thread pools, and a fork
  of a threaded process may inherit a held lock; spawn starts a clean interpreter (as macOS
  and Windows always do).
- Each run is trained, exported, evaluated and analysed by the same worker: the later stages
  of a run start as soon as it is trained, beside the others' training, instead of waiting for
  the slowest one.
- Ctrl-C: a worker puts itself in its own process group, so the terminal's SIGINT reaches the
  parent only, which sends each worker exactly one SIGINT; a training worker then writes a
  checkpoint at its next check and stops, as `strop train` does (two SIGINTs would stop it
  without one). A second Ctrl-C ends the workers at once. A worker whose parent died
  interrupts itself the same way, so no orphan trains on. A rerun resumes each run by stage.
- A failed run is reported as one line (`k64 failed: ...`) while the others go on; the stage
  then fails naming every failed run, and what the others wrote is kept.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from rich.console import Console

from strop.cli_app import one_line
from strop.quickstart.board import RunBoard, RunEvent
from strop.quickstart.config import PlannedRun, QuickstartConfig, run_config
from strop.runs.folder import RunFolder

Report = Callable[[RunEvent], None]


class QuickstartError(RuntimeError):
    """A stage of the quickstart failed; the message says which and where, in one line."""


def trained_steps(run_dir: Path) -> int:
    """The newest kept step checkpoint of a run (0: none)."""
    from strop.model.weights import list_steps

    return max((s for s, _ in list_steps(run_dir)), default=0)


def run_is_finished(qc: QuickstartConfig, run_dir: Path) -> bool:
    """Trained to `qc.steps`, exported, evaluated and (when asked) analysed."""
    run = RunFolder(run_dir)
    analysed = not qc.analyze_images or (run_dir / "analysis" / "analysis.json").is_file()
    return (
        run.programs_path.is_file()
        and run.eval_path.is_file()
        and analysed
        and trained_steps(run_dir) >= qc.steps
    )


def finish_run(
    qc: QuickstartConfig, planned: PlannedRun, data_dir: Path, experiment: Path, report: Report
) -> str:
    """Train (or resume), export, evaluate and analyse one run; returns its summary line.

    Each step is skipped when its output exists, so an interrupted run resumes where it stopped.
    """
    from strop.evaluation.analyze import analyze_run
    from strop.evaluation.evaluate import evaluate_run
    from strop.evaluation.export import export_programs
    from strop.training.log import ProgressBar, format_duration
    from strop.training.trainer import train

    name, run_dir = planned.name, experiment / planned.name
    run = RunFolder(run_dir)
    start = time.perf_counter()
    done = trained_steps(run_dir)
    if done >= qc.steps:
        parts = [f"trained to step {done} before, kept"]
    else:
        kind = "fixed-length baseline" if planned.fixed else "curriculum"
        report(RunEvent(name, "stage", f"building K={planned.k} {kind}"))
        # Disabled, the bar only keeps the last row and writes the summary line.
        bar = ProgressBar(False, qc.steps, done, label="trained", images_per_step=qc.batch_size)

        def on_log(step: int, row: dict[str, Any]) -> None:
            bar.update(step, row)
            plain = {k: v for k, v in row.items() if isinstance(v, int | float | str)}
            report(RunEvent(name, "step", step=step, row=plain))

        cfg = run_config(qc, planned.k, data_dir, fixed=planned.fixed)
        train(cfg, run_dir, progress=False, on_log=on_log)
        parts = [bar.summary(time.perf_counter() - start)]
    if not run.programs_path.is_file():
        report(RunEvent(name, "stage", "exporting programs (train, val)"))
        export_programs(run_dir, split="train,val", progress=False)
    if not run.eval_path.is_file():
        report(RunEvent(name, "stage", "evaluating on val"))
        evaluate_run(run_dir, split="val", progress=False)
    if qc.analyze_images and not (run_dir / "analysis" / "analysis.json").is_file():
        report(RunEvent(name, "stage", f"analysing {qc.analyze_images} images"))
        analyze_run(run_dir, n_images=qc.analyze_images, progress=False)
    ev = run.read_eval()
    parts.append(f"val cos {ev['cos']:.3f}, CB {ev['cb_pct']:.0f}%, length {ev['length_mean']:.1f}")
    parts.append(f"{format_duration(time.perf_counter() - start)} in all")
    return "; ".join(parts)


def stage_runs(
    qc: QuickstartConfig, data_dir: Path, experiment: Path, console: Console
) -> list[Path]:
    """Stages 2-4 for every planned run, `qc.worker_count` at a time; returns the run folders.

    Raises `QuickstartError` naming the failed runs (after the others finished), and
    `KeyboardInterrupt` after every worker stopped, its checkpoint written.
    """
    planned = qc.planned_runs()
    dirs = [experiment / p.name for p in planned]
    todo = [p for p in planned if not run_is_finished(qc, experiment / p.name)]
    for p in planned:
        if p not in todo:
            console.print(f"{p.name}: trained, exported and evaluated before, kept")
    if not todo:
        return dirs
    jobs = qc.worker_count(len(todo))
    where = "in this process" if jobs == 1 else f"{jobs} worker processes side by side"
    console.print(
        f"{len(todo)} run(s) {where} (--jobs), {qc.threads} torch thread(s) each (--threads)"
    )
    failures: dict[str, str] = {}
    with RunBoard([p.name for p in todo], qc.steps, console) as board:

        def record(event: RunEvent) -> None:
            board.handle(event)
            if event.kind == "failed":
                failures[event.run] = event.text

        if jobs == 1:
            _in_process(qc, todo, data_dir, experiment, record)
        else:
            _in_workers(qc, todo, data_dir, experiment, record, jobs, board)
    if failures:
        failed = "; ".join(f"{run}: {why}" for run, why in failures.items())
        raise QuickstartError(
            f"{len(failures)} of {len(planned)} runs failed ({failed}); what the other runs "
            "wrote is kept, and a rerun resumes"
        )
    return dirs


def _in_process(
    qc: QuickstartConfig, todo: list[PlannedRun], data_dir: Path, experiment: Path, report: Report
) -> None:
    for planned in todo:
        try:
            line = finish_run(qc, planned, data_dir, experiment, report)
        except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
            report(RunEvent(planned.name, "failed", _why(err)))
        else:
            report(RunEvent(planned.name, "done", line))


def _why(err: BaseException) -> str:
    """One line: the message, after the exception's type when that is not one of ours."""
    text = one_line(err)
    mine = type(err).__module__.startswith("strop.")
    return text if mine or text == type(err).__name__ else f"{type(err).__name__}: {text}"


def _in_workers(
    qc: QuickstartConfig,
    todo: list[PlannedRun],
    data_dir: Path,
    experiment: Path,
    report: Report,
    jobs: int,
    board: RunBoard,
) -> None:
    ctx = mp.get_context("spawn")
    events: Any = ctx.Queue()
    pending, running = list(todo), dict[str, BaseProcess]()
    ended: set[str] = set()

    def drain(timeout: float) -> None:
        """Hand queued events to `report` (waiting up to `timeout` for the first)."""
        try:
            event = events.get(timeout=timeout)
            while True:
                report(event)
                if event.kind in ("done", "failed", "interrupted"):
                    ended.add(event.run)
                event = events.get_nowait()
        except queue.Empty:
            pass

    def reap() -> None:
        for name, proc in list(running.items()):
            if proc.is_alive():
                continue
            proc.join()
            drain(0.2)  # its last events were flushed before it exited
            if name not in ended:
                why = f"its worker exited with status {proc.exitcode} without a word"
                report(RunEvent(name, "failed", why))
                ended.add(name)
            del running[name]

    try:
        while pending or running:
            while pending and len(running) < jobs:
                planned = pending.pop(0)
                running[planned.name] = _start(ctx, qc, planned, data_dir, experiment, events)
            drain(0.5)
            reap()
    except KeyboardInterrupt:
        board.note(
            f"[yellow]interrupted: {len(running)} worker(s) write a checkpoint and stop "
            "(Ctrl-C again to stop them at once)[/]"
        )
        for proc in running.values():
            _signal(proc, signal.SIGINT)
        try:
            while running:
                drain(0.5)
                reap()
        except KeyboardInterrupt:
            for proc in running.values():
                proc.terminate()
            for proc in running.values():
                proc.join()
        raise


def _start(
    ctx: Any,
    qc: QuickstartConfig,
    planned: PlannedRun,
    data_dir: Path,
    experiment: Path,
    events: Any,
) -> BaseProcess:
    """Spawn the worker of one run. SIGINT is ignored while it starts, so that the child
    begins with it ignored and a Ctrl-C before it leaves our process group cannot kill it
    half-started; the worker installs its own handler."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc: BaseProcess = ctx.Process(
            target=_worker,
            args=(qc, planned, data_dir, experiment, events),
            name=f"quickstart-{planned.name}",
            daemon=True,  # ended with the parent should the parent fail without a Ctrl-C
        )
        proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    return proc


def _signal(proc: BaseProcess, signum: int) -> None:
    if proc.pid is not None and proc.is_alive():
        try:
            os.kill(proc.pid, signum)
        except ProcessLookupError:
            pass


def _worker(
    qc: QuickstartConfig, planned: PlannedRun, data_dir: Path, experiment: Path, events: Any
) -> None:
    """One run in a spawned process: its own process group, `qc.threads` torch threads."""
    parent = os.getppid()
    _die_with_parent(parent)
    os.setpgrp()  # the terminal's Ctrl-C now reaches the parent only, which forwards one
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _interrupt_when_orphaned(parent)
    import torch

    torch.set_num_threads(qc.threads)

    def report(event: RunEvent) -> None:
        events.put(event)

    try:
        line = finish_run(qc, planned, data_dir, experiment, report)
    except KeyboardInterrupt:
        report(RunEvent(planned.name, "interrupted", _interrupted(experiment / planned.name)))
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - reported as one line; the parent goes on
        report(RunEvent(planned.name, "failed", _why(err)))
        sys.exit(1)
    report(RunEvent(planned.name, "done", line))


def _interrupted(run_dir: Path) -> str:
    step = trained_steps(run_dir)
    return f"interrupted, checkpoint at step {step} kept" if step else "interrupted"


def _die_with_parent(parent: int) -> None:
    """Have the kernel end this worker when the quickstart process dies (Linux
    `PR_SET_PDEATHSIG`): a parent killed with SIGKILL cannot forward a Ctrl-C, and an orphan
    that trained on would hold its run's lock against the rerun. Checkpoints are written
    aside and renamed, so the kill loses only the steps since the last one. The orphan
    watch (`_interrupt_when_orphaned`) asks politely and depends on the worker's signal
    state; this does not, and is the one where prctl is available (Linux; checked on
    6.x x86_64 by tests/test_quickstart.py with the parent's SIGINT ignored, as in a
    script's background job)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # died before the request took effect
        os._exit(1)


def _interrupt_when_orphaned(parent: int) -> None:
    """SIGINT this process once its parent is gone (it is then re-parented)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
