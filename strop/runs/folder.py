"""`RunFolder`: one run's paths and readers, and finding the runs of an experiment."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strop.jsonfile import json_kind
from strop.runs.dataset import DATASET_MANIFEST, PROGRAMS_DATASET_DIR, read_programs
from strop.runs.files import (
    RunFolderError,
    append_jsonl,
    read_json,
    read_jsonl,
    write_json,
)
from strop.runs.programs import (
    PROGRAMS_FILE,
    Programs,
    file_codebook_size,
    stored_codebook_size,
    write_programs,
)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
#: `eval.json` fields that hold an object (or null); `RunFolder.read_eval` checks them.
EVAL_OBJECT_FIELDS = ("length_vs_objects", "lpips_weights")


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class RunFolder:
    """One run: paths to every file of the contract, and small readers/writers."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / CONFIG_FILE)
    metrics_path = property(lambda self: self.path / METRICS_FILE)
    programs_file = property(lambda self: self.path / PROGRAMS_FILE)
    programs_dataset_dir = property(lambda self: self.path / PROGRAMS_DATASET_DIR)

    @property
    def programs_path(self) -> Path:
        """`programs.parquet`, or the manifest of the dataset form (`RUN/programs/`) when only
        that is there: every reader that checks `programs_path.is_file()` and then calls
        `read_programs` takes either form."""
        manifest = self.programs_dataset_dir / DATASET_MANIFEST
        if not self.programs_file.is_file() and manifest.is_file():
            return manifest
        return self.programs_file

    eval_path = property(lambda self: self.path / EVAL_FILE)
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    grammar_dir = property(lambda self: self.path / "grammar")
    llm_dir = property(lambda self: self.path / "llm")

    @property
    def has_checkpoint(self) -> bool:
        """Whether `checkpoints/` holds `last.pt` or a `step-NNNNNNN.pt`, loadable or not."""
        folder = self.checkpoints_dir
        if (folder / "last.pt").is_file():
            return True
        return folder.is_dir() and any(
            re.fullmatch(r"step-\d{7,}\.pt", p.name) for p in folder.iterdir()
        )

    def read_config(self) -> dict[str, Any]:
        return read_json(self.config_path)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_path, config)

    def read_eval(self) -> dict[str, Any]:
        """`eval.json`; its nested blocks are objects (or null), as every reader expects."""
        data = read_json(self.eval_path)
        for key in EVAL_OBJECT_FIELDS:
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise RunFolderError(
                    f"{self.eval_path}: field {key}: expected an object, got {json_kind(data[key])}"
                )
        return data

    def write_eval(self, metrics: dict[str, Any]) -> None:
        write_json(self.eval_path, metrics)

    def read_programs(self, codebook_size: int | None = None) -> Programs:
        """The run's programs (either form), every code checked against K
        (`resolve_codebook_size`)."""
        manifest = self.programs_dataset_dir / DATASET_MANIFEST
        if self.programs_file.is_file() and manifest.is_file():
            raise RunFolderError(
                f"{self.path}: holds both {PROGRAMS_FILE} and {PROGRAMS_DATASET_DIR}/"
                f"{DATASET_MANIFEST}; remove the one that is not current (or re-export)"
            )
        programs = read_programs(self.programs_path, codebook_size)
        programs.codebook_size, programs.k_source = resolve_codebook_size(
            programs, self, codebook_size, str(self.programs_path)
        )
        programs.validate(str(self.programs_path))
        return programs

    def write_programs(self, programs: Programs) -> Path:
        return write_programs(self.programs_path, programs)

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, row)

    def read_metrics(self) -> list[dict[str, Any]]:
        """`metrics.jsonl` rows; every row's `step` is a non-negative integer."""
        rows = read_jsonl(self.metrics_path)
        for i, row in enumerate(rows):
            step = row.get("step")
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise RunFolderError(
                    f"{self.metrics_path}: line {i + 1} field step: expected an integer, "
                    f"got {step!r}"[:200]
                )
        return rows

    @property
    def config_codebook_size(self) -> int | None:
        """K from config.json (`model.k` or `k`), or None."""
        if not self.config_path.is_file():
            return None
        cfg = self.read_config()
        model = cfg.get("model") or {}
        if not isinstance(model, dict):
            raise RunFolderError(
                f"{self.config_path}: field model: expected an object, got {json_kind(model)}"
            )
        k = model.get("k", cfg.get("k"))
        if k is None:
            return None
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RunFolderError(
                f"{self.config_path}: field model.k: expected a positive integer, got {k!r}"
            )
        return k

    @property
    def codebook_size(self) -> int | None:
        """K from config.json (`model.k` or `k`), else from the programs file's metadata.

        Only the run's own files say what K is: a folder named `k128` may hold anything."""
        k = self.config_codebook_size
        if k is not None:
            return k
        if self.programs_path.name == DATASET_MANIFEST:
            k = read_json(self.programs_path).get("codebook_size")
            return stored_codebook_size({"codebook_size": k}, self.programs_path)
        if self.programs_path.is_file():
            return file_codebook_size(self.programs_path)
        return None


def resolve_codebook_size(
    programs: Programs, run: RunFolder | None = None, k: int | None = None, source: str = ""
) -> tuple[int | None, str]:
    """The K that `programs`' codes must lie below, and where it came from: `k` when given,
    else the file's stored K, else the run's `config.json`. A stored K that disagrees with the
    config is an error: one of them is wrong, and picking either would hide it."""
    if k is not None:
        return int(k), "given"
    stored = programs.codebook_size
    config_k = run.config_codebook_size if run is not None else None
    if stored is not None and config_k is not None and stored != config_k:
        raise RunFolderError(
            f"{source or run}: programs file says K={stored} but config.json says K={config_k}: "
            "mixed K in one run"
        )
    if stored is not None:
        return stored, "programs metadata"
    if config_k is not None:
        return config_k, "config.json"
    return None, ""


def is_run_folder(path: Path) -> bool:
    return (
        (path / CONFIG_FILE).is_file()
        or (path / PROGRAMS_FILE).is_file()
        or (path / PROGRAMS_DATASET_DIR / DATASET_MANIFEST).is_file()
    )


def discover_runs(path: str | os.PathLike[str]) -> list[RunFolder]:
    """The run itself if `path` is a run, else its run sub-folders in natural order (k32 < k128)."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such folder")
    if is_run_folder(path):
        return [RunFolder(path)]
    runs = [
        RunFolder(p)
        for p in sorted(path.iterdir(), key=lambda p: _natural_key(p.name))
        if p.is_dir() and is_run_folder(p)
    ]
    return runs


def find_run(experiment: str | os.PathLike[str], k: int) -> RunFolder:
    """The sub-run of `experiment` with codebook size `k` (by config, programs file, or name)."""
    runs = discover_runs(experiment)
    for run in runs:
        if run.codebook_size == k:
            return run
    found = ", ".join(f"{r.name} (K={r.codebook_size})" for r in runs) or "none"
    raise RunFolderError(f"{experiment}: no run with K={k}; runs found: {found}")
