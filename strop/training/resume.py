"""Which configuration a run may be resumed with.

A fresh run writes `config.json`; resuming compares the new config with it field by field.

Design decisions
- Only fields that do not change the result may differ (`RESUMABLE_CHANGES`: step count,
  logging, validation and checkpoint cadence, workers, device, compilation, data locations);
  any other difference fails with one sentence naming the first field and its two values.
- An accepted difference rewrites `config.json` (rank 0), so the folder describes the run as
  it now continues, but only after the resume succeeded (`record_config`): a resume that
  fails (no checkpoint fits) leaves the folder as it was.
"""

from __future__ import annotations

from typing import Any

from strop.runs.folder import RunFolder
from strop.training import checkpoint as ckpt
from strop.training.config import ConfigError, RunConfig, load_run_config, stored_config

# Fields that may change between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = {
    "train.steps",
    "train.log_every",
    "train.val_every",
    "train.val_batches",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.num_workers",
    "train.device",
    "train.compile",
    "data.path",
    "data.feature_cache",
}


def resolve_config(run: RunFolder, cfg: RunConfig, is_main: bool) -> RunConfig:
    """A fresh run writes config.json; a resumed run checks the new config against it."""
    if not ckpt.has_checkpoint(run.path):
        if is_main:
            run.path.mkdir(parents=True, exist_ok=True)
            run.write_config(stored_config(cfg, run.path))
        return cfg
    stored = load_run_config(run.path)
    diffs = config_diff(stored_config(stored, run.path), stored_config(cfg, run.path))
    fixed = [d for d in diffs if d[0] not in RESUMABLE_CHANGES]
    if fixed:
        key, old, new = fixed[0]
        raise ConfigError(
            f"{run.config_path}: cannot resume with {key}={new!r}, the run was started "
            f"with {old!r} ({len(fixed)} such difference(s)); use a new --out folder"
        )
    return cfg


def record_config(run: RunFolder, cfg: RunConfig, is_main: bool) -> None:
    """Write `cfg` to config.json (rank 0) when it differs from what is there: call it once
    the run has resumed (or started), so a failed resume rewrites nothing."""
    if not is_main:
        return
    wanted = stored_config(cfg, run.path)
    if (
        not run.config_path.is_file()
        or stored_config(load_run_config(run.path), run.path) != wanted
    ):
        run.write_config(wanted)


def config_diff(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs, sorted by key."""
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out
