"""Which weights a result came from: every derived file (programs, eval, sweep, analysis,
decode and QA summaries) records them, and nothing is written or shown beside other weights.

A run's weights are named by the training step and the sha256 of the checkpoint file they
were loaded from (`last.pt` and its `step-N.pt` copy have the same bytes); an exported
tokenizer names its source checkpoint's sha256 (config.json's provenance), so a result of
the run and one of its export compare equal. The hash is of the bytes actually loaded
(`strop.model.weights.load_checkpoint_hashed`), never of a file read again later.

Torch-free, so that `strop-llm` and `strop report` can tell a stale file without loading
a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from strop.output_unit import folder_lock
from strop.runs.files import RunFolderError, write_json


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_record(step: int | None, checkpoint_sha256: str | None) -> dict[str, Any]:
    """What every derived file (programs, eval, sweep, analysis, decode and QA summaries)
    records of the weights it came from: the training step and the sha256 of the run's
    checkpoint file (an exported tokenizer records its source checkpoint's)."""
    return {"step": step, "checkpoint_sha256": checkpoint_sha256}


def current_weights_sha256(folder: str | os.PathLike[str]) -> str | None:
    """The sha256 of the weights a run folder (`checkpoints/last.pt`) or an exported
    tokenizer (its source checkpoint's, from config.json) holds now; None when it holds none
    or says nothing (a folder written before weights were recorded)."""
    folder = Path(folder)
    last = folder / "checkpoints" / "last.pt"  # strop.model.weights.LAST
    if last.is_file():
        return file_sha256(last)
    # no last.pt (deleted, or a copy without it): the newest step file is what a load or a
    # resume would use, so it is what the run holds
    steps = sorted((folder / "checkpoints").glob("step-*.pt"))  # zero-padded: name order
    if steps:
        return file_sha256(steps[-1])
    config = folder / "config.json"
    if (folder / "model.safetensors").is_file() and config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        sha = (
            (data.get("provenance") or {}).get("checkpoint_sha256")
            if isinstance(data, dict)
            else None
        )
        return sha if isinstance(sha, str) else None
    return None


def stale_reason(recorded: Any, folder: str | os.PathLike[str], what: str) -> str | None:
    """Why `what` (a derived file's name) does not describe the weights `folder` holds now,
    or None when it does. A file that records no weights is stale too: nobody can tell."""
    now = current_weights_sha256(folder)
    if now is None:
        return None  # no weights to compare against (data-only folder)
    if not isinstance(recorded, dict) or not recorded.get("checkpoint_sha256"):
        return f"{what} records no weights (written before weights were recorded); rerun it"
    if recorded["checkpoint_sha256"] != now:
        step = recorded.get("step")
        return (
            f"{what} describes other weights (step {step}, sha256 "
            f"{str(recorded['checkpoint_sha256'])[:12]}) than the run holds now "
            f"(sha256 {now[:12]}); rerun it"
        )
    return None


class WeightsChangedError(RunFolderError):
    """The folder's weights were replaced while a result of the old ones was computed."""


def write_json_of_weights(
    path: str | os.PathLike[str],
    data: Any,
    folder: str | os.PathLike[str],
    loaded_sha256: str | None,
    what: str,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Write a derived JSON file (`eval.json`, `sweep.json`) of the weights whose checkpoint
    had `loaded_sha256`, under the folder's commit lock (`strop.output_unit.folder_lock`,
    which `strop export-model` holds to replace an exported folder's weights), and only if
    the weights are still there (`require_same_weights`)."""
    folder = Path(folder)
    with folder_lock(folder):
        require_same_weights(folder, loaded_sha256, what, Path(path).name, source)
        write_json(path, data)


def require_same_weights(
    folder: str | os.PathLike[str],
    loaded_sha256: str | None,
    what: str,
    output: str,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse (`WeightsChangedError`) to write `output` when the weights `what` loaded were
    replaced meanwhile; call it under the folder's commit lock. `source` is the checkpoint
    file a run's weights were loaded from (`--checkpoint 4` loads step-0000004.pt, which is
    not last.pt and need not be); None for an exported tokenizer (its folder's weights)."""
    if loaded_sha256 is None:
        return
    if source is not None:
        now: str | None = file_sha256(source) if Path(source).is_file() else "(gone)"
    else:
        now = current_weights_sha256(folder)
    if now is not None and now != loaded_sha256:
        where = f"{Path(source).name} was" if source is not None else "its weights were"
        raise WeightsChangedError(
            f"{folder}: {where} replaced while {what} ran (sha256 "
            f"{loaded_sha256[:12]} -> {now[:12]}); {output} not written, rerun {what}"
        )
