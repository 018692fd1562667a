"""Checkpoints: atomic writes, `last.pt` plus kept steps, safe loading, model rebuild.

Layout: `RUN/checkpoints/step-NNNNNNN.pt` (the newest `train.keep_checkpoints` are kept) and
`RUN/checkpoints/last.pt` (always the newest). A checkpoint is a dict of tensors and Python
primitives only, loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.

Design decisions
- One serialisation per save: the state goes to a temporary file in the same folder, is
  fsync'ed, hard-linked to its `step-NNNNNNN.pt` name and renamed over `last.pt` (`os.replace`
  is atomic on POSIX). A crash at any point leaves the previous `last.pt` intact; a stray
  temporary file is ignored and cleaned on the next save. Where hard links are unsupported
  the step file is a copy.
- RNG states are stored as tensors/tuples (NumPy's state array becomes a tensor) so the
  weights-only unpickler accepts them.
- The teacher is not in the model's `state_dict`; `load_model` rebuilds it from `config.json`
  (`build_model`), so a checkpoint stays small and teacher weights come from their own cache.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

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
    """Write `state` as `last.pt` and `step-NNNNNNN.pt` atomically; prune to `keep` step files."""
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stray in folder.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep > 0:
            step_tmp = folder / f".{step_name(step)}.tmp"
            try:
                os.link(tmp, step_tmp)
            except OSError:
                shutil.copyfile(tmp, step_tmp)
            os.replace(step_tmp, folder / step_name(step))
        os.replace(tmp, folder / LAST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    for _, old in list_steps(run_dir)[: -keep if keep > 0 else None]:
        old.unlink(missing_ok=True)
    return folder / LAST


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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable STROP checkpoint ({first})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a STROP checkpoint (no 'model' and 'step' entries)")
    return state


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    return (checkpoints_dir(run_dir) / LAST).is_file()


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
    state = load_checkpoint(path, map_location=map_location)
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
