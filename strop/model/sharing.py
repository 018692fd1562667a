"""`strop export-model`: a run folder -> a shareable tokenizer folder (and, optionally, the hub).

Design decisions
- The exported folder is written by `Strop.save_pretrained` (`strop.model.pretrained`); this
  module only gathers what a stranger needs to trust it: the run's eval numbers
  (`RUN/eval.json`, when `strop eval` ran) and provenance (run name and path, checkpoint file
  and its SHA-256, STROP and torch versions, export time).
- The output folder must not hold another run or a different tokenizer: exporting into a run
  folder would overwrite its config.json, and into an experiment folder (one that holds runs)
  would make `strop report` read the whole folder as one run.
- The folder is one unit (`strop.output_unit`, written by `save_pretrained`): a kill or a
  failed write leaves the previous export whole, or a marker that loaders refuse.
- A `--push-to-hub` repo id is checked before anything is read or written; a failed upload
  (no network, refused credentials) is one line, after the folder was written.
- `training.data_path` is written absolute: the folder is read from other directories.
- Other weights are not exported into a folder holding results (eval.json, sweep.json,
  programs.parquet, analysis/) of the weights there: the model card and `strop report` would
  show them as the new tokenizer's. The same checkpoint again is fine (same SHA-256).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from strop.model.hub import check_repo_id, upload_folder
from strop.model.network import Strop
from strop.model.tokenizer_files import CONFIG_NAME, PretrainedError, is_exported, read_info
from strop.runs.folder import RunFolder, discover_runs, is_run_folder

__all__ = ["export_model"]


def _eval_of(run: RunFolder, weights: dict[str, Any]) -> dict[str, Any] | None:
    """The run's eval.json when it describes the weights being exported, else None: the
    card must not print one checkpoint's numbers beside another's step count."""
    if not run.eval_path.is_file():
        return None
    evaluation = run.read_eval()
    recorded = evaluation.get("weights")
    if not isinstance(recorded, dict) or recorded.get("checkpoint_sha256") != weights.get(
        "checkpoint_sha256"
    ):
        return None
    return evaluation


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


#: What `strop export`, `eval` and `analyze` write into a tokenizer folder: numbers about the
#: weights that are there when they run.
DERIVED = ("programs.parquet", "programs", "eval.json", "sweep.json", "analysis")


def _refuse_stale_results(target: Path, new_sha: str) -> None:
    """Refuse to put other weights into a folder that holds results of the weights it has:
    eval.json or sweep.json of the old tokenizer beside the new one would be reported (the
    model card, `strop report`) as the new one's. Re-exporting the same checkpoint is fine."""
    derived = [name for name in DERIVED if (target / name).exists()]
    if not derived or not is_exported(target):
        return
    try:
        old = read_info(target).provenance.get("checkpoint_sha256")
    except PretrainedError:
        old = None
    if old != new_sha:
        raise PretrainedError(
            f"{target}: holds {', '.join(derived)} of the tokenizer there now, which another "
            "checkpoint would replace; export into another --out (or remove those results)"
        )


def export_model(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    checkpoint: str | int = "last",
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
) -> tuple[Path, str | None, bool]:
    """Write the tokenizer of `run_dir` (at `checkpoint`) to `out`; with `push_to_hub`, upload
    it to that repo id. Returns (folder, commit URL or None, whether it replaced an export
    that was there)."""
    if push_to_hub is not None:
        check_repo_id(push_to_hub)  # a bad id is refused before anything is written
    run = RunFolder(Path(run_dir))
    target = Path(out)
    if is_exported(run.path):  # it has no checkpoints/ to read: say what it is instead
        raise PretrainedError(
            f"{run.path}: already an exported tokenizer (export-model reads a training run); "
            "copy the folder to share it as it is"
        )
    if (target / CONFIG_NAME).is_file() and not is_exported(target):
        raise PretrainedError(
            f"{target}: holds a {CONFIG_NAME} that is not an exported tokenizer "
            "(a run folder?); choose another --out"
        )
    runs = (
        [r.name for r in discover_runs(target)]
        if target.is_dir() and not is_run_folder(target)
        else []
    )
    if runs:  # a config.json here would make `strop report` read the folder as one run
        raise PretrainedError(
            f"{target}: an experiment folder (holds the runs {', '.join(runs[:3])}"
            f"{', ...' if len(runs) > 3 else ''}); export into a folder of its own, "
            f"e.g. --out {target / (run.name + '-tokenizer')}"
        )
    model, info = Strop.from_run(run.path, checkpoint)
    if info.data_path and not info.data_path.startswith("hf://"):
        # the exported folder is read from anywhere: a path relative to where this command
        # ran would point nowhere (or at the wrong data) from another directory
        info = replace(info, data_path=os.path.abspath(info.data_path))
    ckpt_path = Path(info.provenance["checkpoint"])
    sha = info.provenance["checkpoint_sha256"]  # of the bytes the weights were loaded from
    _refuse_stale_results(target, sha)
    evaluation = _eval_of(run, info.weights)
    provenance = {
        "run": run.name,
        "run_path": str(run.path.resolve()),
        "checkpoint": ckpt_path.name,
        "checkpoint_sha256": sha,
        "strop_version": _version("strop"),
        "torch_version": torch.__version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    info = replace(info, provenance=provenance, eval=evaluation)
    replaced = model.write_folder(
        target,
        info=info,
        command=f"strop export-model {run.path} --out {target}",
        # again under the folder's lock: an eval of the old weights may have written its
        # eval.json there since the check above
        before_commit=lambda: _refuse_stale_results(target, sha),
    )
    url = upload_folder(target, push_to_hub, token=token, private=private) if push_to_hub else None
    return target, url, replaced
