"""Checkpoints: atomic writes, `last.pt` plus kept steps, safe loading, model rebuild.

Layout: `RUN/checkpoints/step-NNNNNNN.pt` (the newest `train.keep_checkpoints` are kept) and
`RUN/checkpoints/last.pt` (the newest, or whichever checkpoint the user copied there). A
checkpoint is a dict of tensors and Python primitives only, loaded with
`torch.load(weights_only=True)`: a checkpoint is data, never code.

Design decisions
- Every name is its own file (its own inode): the state is serialised once, fsync'ed, to its
  `step-NNNNNNN.pt` name, then copied (an in-kernel copy, not a hard link) to `last.pt`,
  each through `strop.atomic` (a temporary name renamed over the file; `os.replace` is
  atomic on POSIX). A hard link would make
  `cp step-0000020.pt last.pt` (a natural manual rollback) rewrite the newest step file too,
  and damage to one name damage the other. A crash at any point leaves the previous files
  intact; a stray temporary file is ignored and cleaned on the next save.
- `last.pt` is the run's position, as a pointer would be: a rollback by copying an older step
  file over it is honoured. Resuming (`load_resumable`) reads `last.pt`, and when it is
  missing or unloadable falls back through the step files, newest first, saying which files
  it skipped and why; nothing loadable left is an error naming every file, never a silent
  fresh start. A checkpoint whose weights do not fit the run's model (another K's `last.pt`
  copied in) is skipped the same way, saying why in one line, never a state_dict dump. Run
  folders written before this change (hard-linked names, or `last.pt` alone) read the same
  way.
- A failed write (disk full) is a `CheckpointError` naming the folder and the step, and
  saying which previous checkpoint stays as it was, or that there is none yet.
- Reading (which file `--checkpoint` names, the weights-only load and its one-line errors:
  torch's own message for a refused pickle advises `weights_only=False`, which would run the
  file's code, so it is never quoted) lives in `strop.model.weights`, so that using a trained
  model needs nothing from training; this module re-exports those names and adds the writing
  and resuming side.
- RNG states are stored as tensors/tuples (NumPy's state array becomes a tensor) so the
  weights-only unpickler accepts them.
- The teacher is not in the model's `state_dict`; `load_model` rebuilds it from `config.json`
  (`build_model`), so a checkpoint stays small and teacher weights come from their own cache.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from strop.atomic import atomic_write
from strop.model.weights import (
    LAST,
    CheckpointError,
    candidates,
    checkpoints_dir,
    list_steps,
    load_checkpoint,
    loadable_alternatives,
    resolve_checkpoint,
    step_name,
)
from strop.runs.folder import RunFolder

__all__ = [
    "CHECKPOINT_FORMAT",
    "LAST",
    "CheckpointError",
    "Resumable",
    "candidates",
    "checkpoints_dir",
    "has_checkpoint",
    "list_steps",
    "load_checkpoint",
    "load_model",
    "load_resumable",
    "loadable_alternatives",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "step_name",
]

if TYPE_CHECKING:
    from strop.model import Strop
    from strop.training.config import RunConfig

CHECKPOINT_FORMAT = 1


def save_checkpoint(
    run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int = 3
) -> Path:
    """Write `state` as `step-NNNNNNN.pt` and `last.pt` (two files, each atomic); prune to
    `keep` step files. A failed write raises `CheckpointError`; the previous files stay."""
    folder = checkpoints_dir(run_dir)
    previous = candidates(run_dir)  # what a failed write leaves the run with

    def save(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def copy_step(tmp: str) -> None:
        shutil.copyfile(folder / step_name(step), tmp)  # a copy: its own inode, not a link
        _fsync_file(Path(tmp))

    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        if keep > 0:  # the step file first: `last.pt` never names a step not yet written
            atomic_write(folder / step_name(step), save)
            atomic_write(folder / LAST, copy_step)
        else:
            atomic_write(folder / LAST, save)
    except BaseException as exc:
        # `strop.atomic` removed the temporary file; torch.save reports a failed write as a
        # RuntimeError and `atomic_write` as an `OutputPathError`: both keep the OSError
        cause = _os_error(exc)
        if cause is None:
            raise
        kept = (
            f"the previous checkpoint ({previous[0].name}) is intact"
            if previous
            else "no checkpoint was written yet"
        )
        raise CheckpointError(
            f"{folder}: cannot write the checkpoint of step {step} "
            f"({cause.strerror or type(cause).__name__}); {kept}"
        ) from None
    _fsync_dir(folder)
    for _, old in list_steps(run_dir)[: -keep if keep > 0 else None]:
        old.unlink(missing_ok=True)
    return folder / LAST


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError `exc` is or was raised from (its cause/context chain), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run has any checkpoint file (`last.pt` or a step file), loadable or not."""
    return RunFolder(Path(run_dir)).has_checkpoint


@dataclass
class Resumable:
    """The checkpoint a run resumes from, and what was skipped on the way (one line each)."""

    path: Path
    state: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    newer: list[str] = field(default_factory=list)  # step files past a loadable last.pt

    def describe(self) -> str:
        """One line: which file, which step, and what was skipped and why."""
        text = f"resuming from {self.path} (step {int(self.state['step'])})"
        if self.skipped:
            text += "; skipped " + "; ".join(self.skipped)
        if self.newer:
            text += (
                f"; not resuming from the newer {', '.join(self.newer)}: {LAST} names the "
                "run's position (a rollback, or a save cut short before it was updated)"
            )
        return text


def load_resumable(
    run_dir: str | os.PathLike[str],
    map_location: Any = "cpu",
    fits: Callable[[dict[str, Any]], None] | None = None,
) -> Resumable:
    """The first loadable of `candidates(run_dir)` that `fits` accepts (it raises ValueError
    saying why a state does not fit the run's model, e.g. another K's `last.pt` copied in);
    `CheckpointError` naming every file when none does (a damaged run is never silently
    restarted)."""
    skipped: list[str] = []
    files = candidates(run_dir)
    for path in files:
        try:
            state = load_checkpoint(path, map_location)
            if fits is not None:
                fits(state)
        except CheckpointError as exc:
            skipped.append(str(exc).replace(f"{path}: ", f"{path.name}: ", 1))
            continue
        except ValueError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            skipped.append(f"{path.name}: weights do not fit this run's model ({first})")
            continue
        step = int(state["step"])
        newer = [p.name for s, p in list_steps(run_dir) if s > step and path.name == LAST]
        return Resumable(path, state, skipped, newer)
    if not files:
        raise CheckpointError(f"{checkpoints_dir(run_dir)}: no checkpoint to resume from")
    raise CheckpointError(
        f"{checkpoints_dir(run_dir)}: no loadable checkpoint ({'; '.join(skipped)}); "
        "move the folder aside to start afresh"
    )


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, CUDA) RNG states as weights-only-loadable values."""
    # legacy=True is NumPy's runtime default (a tuple); numpy's stubs type the no-argument call
    # as the dict form, so ask for it explicitly and narrow.
    np_state = np.random.get_state(legacy=True)
    if not isinstance(np_state, tuple):
        raise TypeError(f"numpy RNG state: expected the legacy tuple, got {type(np_state)}")
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------- model


def load_model(
    run_dir: str | os.PathLike[str], which: str | int = "last", map_location: Any = "cpu"
) -> tuple[Strop, RunConfig]:
    """Rebuild the trained model (teacher included) from `config.json` and a checkpoint, in
    eval mode, with its `RunConfig` (the model itself comes from `Strop.from_run`)."""
    from strop.model.network import Strop
    from strop.training.config import load_run_config

    cfg = load_run_config(run_dir)
    model, _ = Strop.from_run(run_dir, which, map_location)
    return model, cfg
