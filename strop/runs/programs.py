"""`programs.parquet`: the `Programs` corpus, its Parquet writer and reader.

`codes` are stored as `list<int32>`, and the codebook size K (plus any other run facts) in
the Parquet schema metadata under `strop`, so a reader can validate codes without the
config, and `datasets.load_dataset("parquet", ...)` still reads it as a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strop.atomic import atomic_write
from strop.jsonfile import json_kind
from strop.runs.files import RunFolderError

PROGRAMS_FILE = "programs.parquet"
_META_KEY = b"strop"


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


def stored_codebook_size(meta: dict[str, Any], path: Path) -> int | None:
    """The `codebook_size` of a programs file's metadata, checked: a positive integer or None."""
    k = meta.get("codebook_size")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise RunFolderError(
            f"{path}: schema metadata 'strop' field codebook_size: expected a positive "
            f"integer, got {k!r}"[:200]
        )
    return k


def file_codebook_size(path: Path) -> int | None:
    """The K a `programs.parquet` stores in its schema metadata (its rows are not read)."""
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as handle:  # pyarrow wants UTF-8 paths
            schema = pq.read_schema(handle)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise RunFolderError(f"{path}: not a readable Parquet file ({exc})") from None
    return stored_codebook_size(_read_meta(schema, path), path)


def read_programs_file(path: str | os.PathLike[str], codebook_size: int | None = None) -> Programs:
    """Read and validate one `programs.parquet` (`strop.runs.dataset.read_programs` takes
    the dataset form too). `codebook_size` overrides the stored K."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
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
    k = codebook_size if codebook_size is not None else stored_codebook_size(meta, path)
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
