"""Reading a run's weight files: where checkpoints live, which one `--checkpoint` names, and
loading one safely. The model layer owns this so that anything that only *uses* a trained
tokenizer (evaluation, export, `Strop.from_pretrained`) needs nothing from training; the
trainer's writing side (atomic saves, resume order, RNG state) stays in
`strop.training.checkpoint`, which re-exports these names.

Design decisions
- A checkpoint is loaded with `torch.load(weights_only=True)`: a checkpoint is data, never
  code.
- Load errors name the file and say what is wrong in our words: torch's own message for a
  refused pickle advises `weights_only=False`, which would run the file's code; it is never
  quoted.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"
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


def candidates(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Checkpoint files in resume order: `last.pt`, then the step files newest first."""
    last = checkpoints_dir(run_dir) / LAST
    ordered = [last] if last.is_file() else []
    return ordered + [p for _, p in reversed(list_steps(run_dir))]


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
    return load_checkpoint_hashed(path, map_location)[0]


def load_checkpoint_hashed(
    path: str | os.PathLike[str], map_location: Any = "cpu"
) -> tuple[dict[str, Any], str]:
    """(`load_checkpoint`, the sha256 of the bytes it loaded). One read of one open file:
    a trainer replacing `last.pt` meanwhile (an `os.replace`) cannot make the hash describe
    other weights than the ones loaded."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or unsafe file
        raise CheckpointError(f"{path}: not a loadable STROP checkpoint ({_why(exc)})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path}: not a STROP checkpoint (no 'model' and 'step' entries)")
    return state, hashlib.sha256(data).hexdigest()


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
