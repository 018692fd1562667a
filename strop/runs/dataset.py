"""The dataset form of a run's programs (`RUN/programs/`: parquet shards + manifest.json,
`docs/FORMATS.md`), read here so that `read_programs` takes either form; its writer is
`strop.evaluation.programs_dataset` (the export's).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from strop.runs.files import RunFolderError, read_json
from strop.runs.programs import Programs, read_programs_file

#: the dataset form of a run's programs (`strop.evaluation.programs_dataset`): RUN/programs/manifest.json
PROGRAMS_DATASET_DIR = "programs"
DATASET_MANIFEST = "manifest.json"
DATASET_PLAN = "plan.json"
DATASET_FORMAT = "strop-programs-dataset"
DATASET_VERSION = 1


class ProgramsDatasetError(RunFolderError):
    """A programs dataset folder that cannot be used; the message is one line."""


def is_programs_dataset(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a dataset folder or its manifest (finished or not)."""
    path = Path(path)
    if path.is_file():
        return path.name == DATASET_MANIFEST
    return path.is_dir() and (
        (path / DATASET_MANIFEST).is_file() or (path / DATASET_PLAN).is_file()
    )


def concat_programs(parts: list[Programs], meta: dict[str, Any]) -> Programs:
    return Programs(
        codes=[c for p in parts for c in p.codes],
        image_id=[i for p in parts for i in p.image_id],
        split=[s for p in parts for s in p.split],
        n_objects=np.concatenate([p.n_objects for p in parts]),
        scene=[s for p in parts for s in p.scene],
        codebook_size=parts[0].codebook_size,
        meta=meta,
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest) of a dataset folder or its manifest.json, checked field by field."""
    path = Path(path)
    folder = path.parent if path.name == DATASET_MANIFEST and not path.is_dir() else path
    manifest_path = folder / DATASET_MANIFEST
    if not manifest_path.is_file():
        if (folder / DATASET_PLAN).is_file():
            raise ProgramsDatasetError(
                f"{folder}: programs dataset without {DATASET_MANIFEST}: its export did not "
                "finish; rerun the same `strop export` to resume it"
            )
        raise ProgramsDatasetError(f"{folder}: not a programs dataset (no {DATASET_MANIFEST})")
    manifest = read_json(manifest_path)
    if manifest.get("format") != DATASET_FORMAT or manifest.get("version") != DATASET_VERSION:
        raise ProgramsDatasetError(
            f"{manifest_path}: format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; expected {DATASET_FORMAT!r} version {DATASET_VERSION}"
        )
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ProgramsDatasetError(f"{manifest_path}: field shards: expected a non-empty list")
    for i, s in enumerate(shards):
        ok = (
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and "/" not in s["file"]
            and not s["file"].startswith(".")
            and isinstance(s.get("rows"), int)
            and isinstance(s.get("sha256"), str)
            and isinstance(s.get("split"), str)
        )
        if not ok:
            raise ProgramsDatasetError(
                f"{manifest_path}: field shards[{i}]: expected file, split, rows, sha256"
            )
    return folder, manifest


def iter_shards(
    path: str | os.PathLike[str], codebook_size: int | None = None
) -> Iterator[tuple[dict[str, Any], Programs]]:
    """Each shard's manifest record and its programs, one shard in memory at a time, each
    checked against the manifest (sha256, rows, split) and K."""
    folder, manifest = read_manifest(path)
    k = codebook_size if codebook_size is not None else manifest.get("codebook_size")
    for record in manifest["shards"]:
        shard = folder / record["file"]
        if not shard.is_file():
            raise ProgramsDatasetError(f"{shard}: shard listed in {DATASET_MANIFEST} is missing")
        if sha256_of(shard) != record["sha256"]:
            raise ProgramsDatasetError(
                f"{shard}: sha256 differs from {DATASET_MANIFEST}: the shard was changed after "
                "the export; rerun it with --replace"
            )
        programs = read_programs_file(shard, k)
        if len(programs) != record["rows"] or set(programs.split) - {record["split"]}:
            raise ProgramsDatasetError(
                f"{shard}: {len(programs)} rows of split(s) {sorted(set(programs.split))}; "
                f"{DATASET_MANIFEST} says {record['rows']} rows of {record['split']!r}"
            )
        yield record, programs


def read_dataset(path: str | os.PathLike[str], codebook_size: int | None = None) -> Programs:
    """Every shard of a programs dataset, in manifest order, as one `Programs`."""
    _, manifest = read_manifest(path)
    parts = [programs for _, programs in iter_shards(path, codebook_size)]
    out = concat_programs(parts, dict(manifest.get("meta") or {}))
    k = codebook_size if codebook_size is not None else manifest.get("codebook_size")
    out.codebook_size = int(k) if k is not None else None
    return out


def split_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """Rows per split of a finished dataset (from its manifest)."""
    _, manifest = read_manifest(path)
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise ProgramsDatasetError(f"{path}: field splits: expected an object")
    return {str(k): int(v) for k, v in splits.items()}


def read_programs(path: str | os.PathLike[str], codebook_size: int | None = None) -> Programs:
    """Read and validate a `programs.parquet`, or a programs dataset (its folder or its
    `manifest.json`, `strop.evaluation.programs_dataset`). `codebook_size` overrides the stored K."""
    path = Path(path)
    if path.is_dir() or path.name == DATASET_MANIFEST:
        return read_dataset(path, codebook_size)
    return read_programs_file(path, codebook_size)
