"""The run folder: the only contract between `strop`, `grammar` and `llm_decode`.

Torch-free on purpose. Layout (`docs/FORMATS.md`)::

    EXPERIMENT/            e.g. runs/clevr
      k128/                one run
        config.json        resolved configuration
        checkpoints/       step-NNNNNNN.pt, last.pt
        metrics.jsonl      one JSON object per logged step
        programs.parquet   image_id, split, codes, length, n_objects, scene
        programs/          or, for large exports, the same rows as parquet shards +
                           manifest.json (`strop.evaluation.programs_dataset`)
        eval.json          evaluation metrics
        grammar/           strop-grammar output
        llm/<model>/       strop-llm output

Design decisions
- `programs.parquet` stores `codes` as `list<int32>` and the codebook size `K` (plus any other
  run facts) in the Parquet schema metadata under `strop`, so a reader can validate codes
  without the config, and `datasets.load_dataset("parquet", ...)` still reads it as a table.
- Every writer goes through a temporary name then `os.replace`: nothing half-written remains.
- Validation errors are one line naming file, row and field.
- Codes are checked against K in one place (`resolve_codebook_size` + `Programs.validate`),
  shared by every reader of a run's programs: K from the caller, else the file's metadata,
  else the run's `config.json`; metadata and config disagreeing is an error, not a choice.
- One writer per run folder: `RunLock` holds an exclusive lock on `RUN/.lock` (which records
  the holder's pid) for as long as a training runs; see `RunLock` for why it is a POSIX
  record lock (`fcntl.lockf`) and not an `flock`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.atomic import atomic_write, atomic_write_text, free_space, is_disk_full, open_for_append
from strop.jsonfile import json_kind, read_json_object

PROGRAMS_FILE = "programs.parquet"
#: the dataset form of a run's programs (`strop.evaluation.programs_dataset`): RUN/programs/manifest.json
PROGRAMS_DATASET_DIR = "programs"
DATASET_MANIFEST = "manifest.json"
DATASET_PLAN = "plan.json"
DATASET_FORMAT = "strop-programs-dataset"
DATASET_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
LOCK_FILE = ".lock"
#: `eval.json` fields that hold an object (or null); `RunFolder.read_eval` checks them.
EVAL_OBJECT_FIELDS = ("length_vs_objects", "lpips_weights")
_META_KEY = b"strop"


class RunFolderError(ValueError):
    """A run folder or one of its files that cannot be used; the message is one line."""


# --------------------------------------------------------------------------- programs


@dataclass
class Programs:
    """A corpus of programs, one row per image. `n_objects` is -1 where unknown."""

    codes: list[np.ndarray]
    image_id: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    # Empty (the default) means unknown for every image; never None after construction.
    n_objects: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scene: list[str | None] = field(default_factory=list)
    codebook_size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: where `codebook_size` came from (e.g. "programs metadata", "config.json"), for messages
    k_source: str = ""

    def __post_init__(self) -> None:
        n = len(self.codes)
        self.codes = [np.asarray(c, dtype=np.int64).reshape(-1) for c in self.codes]
        if not self.image_id:
            self.image_id = [str(i) for i in range(n)]
        if not self.split:
            self.split = [""] * n
        if self.n_objects is None or (n and len(self.n_objects) == 0):  # None: older callers
            self.n_objects = np.full(n, -1, dtype=np.int64)
        self.n_objects = np.asarray(self.n_objects, dtype=np.int64)
        if not self.scene:
            self.scene = [None] * n
        for name in ("image_id", "split", "scene"):
            if len(getattr(self, name)) != n:
                raise RunFolderError(
                    f"programs: column {name} has {len(getattr(self, name))} rows, codes has {n}"
                )
        if len(self.n_objects) != n:
            raise RunFolderError(
                f"programs: column n_objects has {len(self.n_objects)} rows, codes has {n}"
            )

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.codes], dtype=np.int64)

    def padded(self, pad: int = -1) -> np.ndarray:
        """(N, max_len) int64 array, positions past each program's length set to `pad`."""
        lengths = self.lengths
        out = np.full((len(self), int(lengths.max(initial=0))), pad, dtype=np.int64)
        for i, c in enumerate(self.codes):
            out[i, : len(c)] = c
        return out

    def subset(self, index: np.ndarray | list[int]) -> Programs:
        idx = [int(i) for i in index]
        return Programs(
            codes=[self.codes[i] for i in idx],
            image_id=[self.image_id[i] for i in idx],
            split=[self.split[i] for i in idx],
            n_objects=self.n_objects[idx] if len(idx) else np.zeros(0, dtype=np.int64),
            scene=[self.scene[i] for i in idx],
            codebook_size=self.codebook_size,
            meta=dict(self.meta),
            k_source=self.k_source,
        )

    def validate(self, source: str = "programs") -> None:
        """Check codes lie in [0, K) (when K is known) and are non-negative."""
        for i, c in enumerate(self.codes):
            if c.size and c.min() < 0:
                raise RunFolderError(
                    f"{source}: row {i} ({self.image_id[i]}) field codes: negative code {int(c.min())}"
                )
            if self.codebook_size is not None and c.size and c.max() >= self.codebook_size:
                origin = f" (K from {self.k_source})" if self.k_source else ""
                raise RunFolderError(
                    f"{source}: row {i} ({self.image_id[i]}) field codes: code {int(c.max())} "
                    f"outside [0, {self.codebook_size}){origin}"
                )


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


def programs_table(programs: Programs) -> Any:
    """The programs as a pyarrow table (K and `meta` in the schema metadata under `strop`)."""
    import pyarrow as pa

    meta = dict(programs.meta)
    if programs.codebook_size is not None:
        meta["codebook_size"] = int(programs.codebook_size)
    table = pa.table(
        {
            "image_id": pa.array(programs.image_id, pa.string()),
            "split": pa.array(programs.split, pa.string()),
            "codes": pa.array([c.astype(np.int32) for c in programs.codes], pa.list_(pa.int32())),
            "length": pa.array(programs.lengths.astype(np.int32), pa.int32()),
            "n_objects": pa.array(
                [None if n < 0 else int(n) for n in programs.n_objects], pa.int32()
            ),
            "scene": pa.array(programs.scene, pa.string()),
        }
    )
    return table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def write_programs(path: str | os.PathLike[str], programs: Programs) -> Path:
    """Write `programs.parquet` atomically (K and `meta` go into the schema metadata)."""
    import pyarrow.parquet as pq

    path = Path(path)
    programs.validate(str(path))
    table = programs_table(programs)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # pyarrow refuses paths that are not UTF-8
            pq.write_table(table, handle)

    atomic_write(path, write)
    return path


def _read_meta(schema: Any, path: Path) -> dict[str, Any]:
    """The run facts a programs file carries in its schema metadata (`strop`: a JSON object)."""
    raw = (schema.metadata or {}).get(_META_KEY)
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise RunFolderError(f"{path}: schema metadata 'strop' is not valid JSON") from None
    if not isinstance(meta, dict):
        raise RunFolderError(
            f"{path}: schema metadata 'strop': expected a JSON object, got {json_kind(meta)}"
        )
    return meta


def _codebook_size(meta: dict[str, Any], path: Path) -> int | None:
    k = meta.get("codebook_size")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise RunFolderError(
            f"{path}: schema metadata 'strop' field codebook_size: expected a positive "
            f"integer, got {k!r}"[:200]
        )
    return k


def read_programs(path: str | os.PathLike[str], codebook_size: int | None = None) -> Programs:
    """Read and validate a `programs.parquet`, or a programs dataset (its folder or its
    `manifest.json`, `strop.evaluation.programs_dataset`). `codebook_size` overrides the stored K."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir() or path.name == DATASET_MANIFEST:
        return read_dataset(path, codebook_size)
    if not path.is_file():
        raise RunFolderError(f"{path}: programs file not found")
    try:
        with open(path, "rb") as handle:  # pyarrow refuses paths that are not UTF-8
            table = pq.read_table(handle)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise RunFolderError(f"{path}: not a readable Parquet file ({exc})") from None
    if "codes" not in table.column_names:
        raise RunFolderError(f"{path}: missing column 'codes'")
    meta = _read_meta(table.schema, path)
    n = table.num_rows
    codes_type = table.schema.field("codes").type
    if not (
        (pa.types.is_list(codes_type) or pa.types.is_large_list(codes_type))
        and pa.types.is_integer(codes_type.value_type)
    ):
        # a float code would be truncated to an integer without a word: refuse it
        raise RunFolderError(f"{path}: column codes is {codes_type}, expected lists of integers")
    codes_col = table.column("codes").combine_chunks()
    if codes_col.null_count:
        row = next(i for i, v in enumerate(codes_col.is_null().to_pylist()) if v)
        raise RunFolderError(f"{path}: row {row} field codes: missing")
    offsets = np.asarray(codes_col.offsets)
    if codes_col.values.null_count:
        at = int(np.flatnonzero(codes_col.values.is_null().to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(offsets, at, side="right") - 1)
        ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else None
        named = f" ({ids[row]})" if ids else ""
        raise RunFolderError(
            f"{path}: row {row}{named} field codes: null at position {at - int(offsets[row])}"
        )
    flat = np.asarray(codes_col.values, dtype=np.int64)
    codes = [flat[offsets[i] : offsets[i + 1]] for i in range(n)]

    def column(name: str, default: Any) -> list[Any]:
        return table.column(name).to_pylist() if name in table.column_names else [default] * n

    if "length" in table.column_names:
        lengths = np.asarray(table.column("length").to_numpy(zero_copy_only=False))
        bad = np.nonzero(lengths != np.diff(offsets))[0]
        if bad.size:
            i = int(bad[0])
            raise RunFolderError(
                f"{path}: row {i} field length: {int(lengths[i])} but codes has {len(codes[i])} entries"
            )
    n_obj = np.array([-1 if v is None else v for v in column("n_objects", None)], dtype=np.int64)
    k = codebook_size if codebook_size is not None else _codebook_size(meta, path)
    programs = Programs(
        codes=codes,
        image_id=[str(v) for v in column("image_id", None)]
        if "image_id" in table.column_names
        else [],
        split=[v or "" for v in column("split", "")],
        n_objects=n_obj,
        scene=column("scene", None),
        codebook_size=int(k) if k is not None else None,
        meta=meta,
    )
    programs.validate(str(path))
    return programs


# --------------------------------------------------------------------------- programs dataset
#
# The dataset form of a run's programs (`RUN/programs/`: parquet shards + manifest.json,
# `docs/FORMATS.md`), read here so that `read_programs` takes either form; its writer is
# `strop.evaluation.programs_dataset` (the export's).


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
        programs = read_programs(shard, k)
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


# --------------------------------------------------------------------------- run folders


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
            return _codebook_size({"codebook_size": k}, self.programs_path)
        if self.programs_path.is_file():
            import pyarrow.parquet as pq

            try:
                with open(self.programs_path, "rb") as handle:  # pyarrow wants UTF-8 paths
                    schema = pq.read_schema(handle)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise RunFolderError(
                    f"{self.programs_path}: not a readable Parquet file ({exc})"
                ) from None
            return _codebook_size(_read_meta(schema, self.programs_path), self.programs_path)
        return None


class RunLockedError(RunFolderError):
    """Another process holds the run folder's lock; the message names its pid."""


class RunLock:
    """An exclusive lock on a run folder (`RUN/.lock`, holding the pid), for one writer.

    `acquire` fails at once with `RunLockedError` when another live process holds it.

    Which lock, and why: the lock must belong to the training process alone and go when it
    dies, however it dies. A training forks DataLoader workers, and a fork shares its
    parent's open file descriptions. An `flock` (and an open-file-description lock,
    `F_OFD_SETLK`) belongs to the open file description, so each worker held it too, and a
    worker orphaned by a `kill -9` of the trainer kept the folder locked forever; `O_CLOEXEC`
    does not help (a fork without exec keeps every descriptor). A POSIX record lock
    (`fcntl.lockf`, `F_SETLK`) belongs to the process: a fork does not inherit it and the
    kernel drops it when the process exits or is killed. Its known flaw is that closing any
    descriptor of the file in the holding process drops it, and that it never excludes its
    own process; only `RunLock` opens the file, and a per-process table of held folders
    refuses a second `RunLock` on a folder this process holds.

    A refusal names the pid recorded in the file; when that pid is no longer running (the
    lock is held by a process it left behind, or by one in another pid namespace) the
    message says so and names the process the kernel reports as the holder.
    """

    _held: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of each held lock file -> pid

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        user: str = "training",
        instead: str = "train into another --out folder",
    ) -> None:
        """`user` names what holds the lock in a refusal and `instead` the way around it
        (a decode or QA results folder takes the same lock: `llm_decode.runner.decode`)."""
        self.path = Path(path)
        self.lock_path = self.path / LOCK_FILE
        self.user, self.instead = user, instead
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None

    def acquire(self) -> RunLock:
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if self._held_here():
                # Opening and closing the file again would drop this process's own lock.
                raise RunLockedError(self._refusal(str(os.getpid()), os.getpid()))
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunFolderError(
                f"{self.path}: cannot use as a run folder ({exc.strerror or exc})"
            ) from None
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            recorded = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            holder = _lock_holder(fd)
            os.close(fd)
            raise RunLockedError(self._refusal(recorded, holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self._key = fd, key
        RunLock._held[key] = os.getpid()
        return self

    def _held_here(self) -> bool:
        try:
            info = self.lock_path.stat()
        except FileNotFoundError:
            return False
        return RunLock._held.get((info.st_dev, info.st_ino)) == os.getpid()

    def _refusal(self, recorded: str, holder: int | None) -> str:
        if not recorded.isdigit() or pid_running(int(recorded)):
            return (
                f"{self.path}: in use by another {self.user} (pid {recorded}); "
                f"wait for it to finish, or {self.instead}"
            )
        held_by = f"pid {holder}" if holder else "another process"
        return (
            f"{self.path}: locked by {held_by}, but the {self.user} recorded in "
            f"{self.lock_path} (pid {recorded}) is no longer running; stop {held_by}, "
            f"or {self.instead}"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        if self._key is not None:
            RunLock._held.pop(self._key, None)
        self._fd = self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def pid_running(pid: int) -> bool:
    """Whether a process `pid` exists here (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _lock_holder(fd: int) -> int | None:
    """The pid the kernel names as the holder of a write lock on `fd`'s file (F_GETLK), or
    None where the platform's `struct flock` layout is not the one packed here (Linux)."""
    import fcntl
    import struct
    import sys

    if sys.platform != "linux" or struct.calcsize("P") != 8:
        return None
    layout = "hhqqi4x"  # l_type, l_whence, l_start, l_len, l_pid (64-bit Linux, padded)
    try:
        query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        kind, _, _, _, pid = struct.unpack(layout, answer)
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


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


# --------------------------------------------------------------------------- json helpers


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file that holds one object (every JSON file of a run folder does)."""
    return read_json_object(path, RunFolderError)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def append_jsonl(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk, so a killed process keeps every row written.

    A failed write (disk full) is a one-line `RunFolderError` naming the space left; it may
    leave a torn last line, which `read_jsonl` skips and a resumed training drops
    (`MetricLog.truncate`). A path that is not a regular file (a FIFO would block the open
    forever) is refused."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(open_for_append(path), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        why = f"the disk is full: {free_space(path)}" if is_disk_full(exc) else exc.strerror
        raise RunFolderError(f"{path}: cannot append a row ({why or exc})") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read JSON lines; a torn last line (process killed mid-write) is skipped, others are errors."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i == len(lines) - 1:
                break
            raise RunFolderError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(row, dict):
            raise RunFolderError(
                f"{path}: line {i + 1}: expected a JSON object, got {json_kind(row)}"
            )
        rows.append(row)
    return rows
