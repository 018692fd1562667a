"""Checkpoints: atomic writes, `last.pt` plus kept steps, safe loading, model rebuild.

Layout: `RUN/checkpoints/step-NNNNNNN.pt` (the newest `train.keep_checkpoints` are kept) and
`RUN/checkpoints/last.pt` (the newest, or whichever checkpoint the user copied there). A
checkpoint is a dict of tensors and Python primitives only, loaded with
`torch.load(weights_only=True)`: a checkpoint is data, never code.

Design decisions
- Every name is its own file (its own inode): the state is serialised once to a temporary
  file, fsync'ed, copied (an in-kernel copy, not a hard link) to its `step-NNNNNNN.pt` name
  and renamed over `last.pt` (`os.replace` is atomic on POSIX). A hard link would make
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
- Load errors name the file and say what is wrong in our words: torch's own message for a
  refused pickle advises `weights_only=False`, which would run the file's code; it is never
  quoted.
- RNG states are stored as tensors/tuples (NumPy's state array becomes a tensor) so the
  weights-only unpickler accepts them.
- The teacher is not in the model's `state_dict`; `load_model` rebuilds it from `config.json`
  (`build_model`), so a checkpoint stays small and teacher weights come from their own cache.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from strop.runs import RunFolder

if TYPE_CHECKING:
    from strop.model import Strop
    from strop.training.config import RunConfig

LAST = "last.pt"
CHECKPOINT_FORMAT = 1
_STEP_RE = re.compile(r"step-(\d{7,})\.pt")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unusable; the message is one line naming the file."""


def checkpoints_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:07d}.pt"


def list_steps(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Kept step checkpoints of a run, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.fullmatch(p.name))]
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], keep: int = 3
) -> Path:
    """Write `state` as `step-NNNNNNN.pt` and `last.pt` (two files, each atomic); prune to
    `keep` step files. A failed write raises `CheckpointError`; the previous files stay."""
    folder = checkpoints_dir(run_dir)
    previous = candidates(run_dir)  # what a failed write leaves the run with
    tmp = step_tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob(".*.tmp"):
            stray.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ckpt.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain open() gives (mkstemp's is 0600)
        if keep > 0:
            step_tmp = folder / f".{step_name(step)}.tmp"
            shutil.copyfile(tmp, step_tmp)  # a copy: its own inode, never a second name
            _fsync_file(step_tmp)
            os.replace(step_tmp, folder / step_name(step))
        os.replace(tmp, folder / LAST)
    except BaseException as exc:
        for leftover in (tmp, step_tmp):
            if leftover is not None:
                Path(leftover).unlink(missing_ok=True)
        cause = _os_error(exc)  # torch.save reports a failed write as a RuntimeError
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


def resolve_checkpoint(run_dir: str | os.PathLike[str], which: str | int = "last") -> Path:
    """`which`: "last", a step number, "step-NNNNNNN", or a path to a `.pt` file."""
    if isinstance(which, int) or str(which).isdigit():
        path = checkpoints_dir(run_dir) / step_name(int(which))
    elif str(which) == "last":
        path = checkpoints_dir(run_dir) / LAST
    elif str(which).endswith(".pt") and Path(which).is_file():
        path = Path(which)
    else:
        path = checkpoints_dir(run_dir) / f"{which}.pt"
    if not path.is_file():
        kept = ", ".join(p.name for _, p in list_steps(run_dir)) or "none"
        raise CheckpointError(f"{path}: checkpoint not found (kept steps: {kept})")
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with the weights-only unpickler; one-line error when it is unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises several types for a damaged or unsafe file
        raise CheckpointError(f"{path}: not a loadable STROP checkpoint ({_why(exc)})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a STROP checkpoint (no 'model' and 'step' entries)")
    return state


def _why(exc: BaseException) -> str:
    """What is wrong with a file torch refused, in our words.

    torch's message for a refused pickle advises re-running with `weights_only=False`, which
    would execute whatever the file holds; only the unpickler's own finding is kept.
    """
    text = str(exc)
    code = re.search(r"unsupported GLOBAL (\S+?)(?:\s|$)", text, re.IGNORECASE)
    if code:
        return f"refused: it holds Python code ({code.group(1)}), not only tensors and numbers"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        return f"damaged or not a checkpoint ({found.group(1).strip().rstrip('.')})"
    if isinstance(exc, EOFError) or "zip archive" in text or "central directory" in text:
        return "damaged or truncated file"
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return "damaged or not a checkpoint (unknown format)"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether the run has any checkpoint file (`last.pt` or a step file), loadable or not."""
    return RunFolder(Path(run_dir)).has_checkpoint


def candidates(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint files in resume order: `last.pt`, then the step files newest first."""
    last = checkpoints_dir(run_dir) / LAST
    ordered = [last] if last.is_file() else []
    return ordered + [p for _, p in reversed(list_steps(run_dir))]


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


def loadable_alternatives(run_dir: str | os.PathLike[str], but: Path) -> list[str]:
    """Names of the step files other than `but` that load (for an error message)."""
    names = []
    for path in candidates(run_dir):
        if path == but or path.name == LAST:
            continue
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue
        names.append(path.stem)
    return names


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
    eval mode, with its `RunConfig`."""
    from strop.model import build_model
    from strop.training.config import load_run_config

    cfg = load_run_config(run_dir)
    path = resolve_checkpoint(run_dir, which)
    try:
        state = load_checkpoint(path, map_location=map_location)
    except CheckpointError as exc:
        others = loadable_alternatives(run_dir, path)
        hint = (
            f"; loadable: {', '.join(others)} (choose one with --checkpoint)"
            if others
            else "; no other checkpoint of this run loads"
        )
        raise CheckpointError(f"{exc}{hint}") from None
    model = build_model(cfg.model)
    try:
        model.load_state_dict_checked(state["model"])
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: weights do not fit the model of {Path(run_dir) / 'config.json'} ({first})"
        ) from None
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, cfg
