"""One door to every image input a pass over a whole dataset reads (`strop export`, and
`strop cache-features` when it shares the export's machinery).

`open_input(spec, split, image_size)` takes what `--data` says and returns either
- a torch map-style dataset (`build_dataset`: CLEVR folder, image folder, `datasets` copy,
  `hf://owner/name` read whole), or
- a `RowStream`: rows 0..N-1 read in order, with no random access: WebDataset tar shards
  (`strop.data.webdataset`) and hub datasets in streaming mode (`hf://owner/name` with
  `streaming=True`, `HubStreamImages`).
`loader_for(input, batch_size, rows)` is a DataLoader over rows [start, stop) of either kind,
batches collated by `collate_items`, which keeps the items that failed to decode out of the
image tensor and lists them under `failed` (image id + reason): a caller counts and records
them, it never loses them without a word.

Design decisions
- A stream knows its length before any image is decoded (tar headers; a pass over a hub
  stream without decoding) because the export plans its shards by row ranges: shard i of a
  split is rows [i*N, (i+1)*N) whatever process writes it, which keeps a torchrun export equal
  to a one-process export and a resumed one equal to an uninterrupted one.
- A hub stream is read once per process: its cursor moves forward across the row ranges asked
  of it in increasing order (a rank's shards are), so a rank streams the split once instead of
  once per shard. `datasets` offers no seek into a stream (`skip` reads the rows it skips).
- `streaming` applies to `hf://` only: tar shards always stream, and a folder or local
  parquet copy needs no stream.
- Checked on datasets 5.2: `load_dataset(..., streaming=True)` returns an `IterableDataset`
  whose `features` may be None until a row is read, whose webdataset builder names the sample
  key `__key__`, and whose image column can be cast to `Image(decode=False)` (bytes + path).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset, IterableDataset

from strop.data.datasets import (
    DATASETS_ERRORS,
    HUB_PREFIX,
    DataError,
    Item,
    build_dataset,
    collate,
    datasets_error,
    load_image,
)
from strop.data.webdataset import WebDatasetImages, is_tar_spec


@runtime_checkable
class RowStream(Protocol):
    """An input read in order: `len` rows, `iter_rows(start, stop)` yields items (or
    `{"index", "image_id", "error"}` for an image that does not decode)."""

    source: str

    def __len__(self) -> int: ...

    def iter_rows(self, start: int = 0, stop: int | None = None) -> Iterator[Item]: ...


def is_input_spec(spec: str | os.PathLike[str]) -> bool:
    """Whether `--data` names an input that is not one local path: hub id or tar pattern."""
    text = str(spec)
    return text.startswith(HUB_PREFIX) or is_tar_spec(text)


def open_input(
    spec: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 128,
    *,
    streaming: bool = False,
    limit: int | None = None,
    tolerant: bool = False,
) -> Any:
    """The images of `split` that `spec` names, the first `limit` of them: a map-style torch
    dataset or a `RowStream` (see the module doc). Errors are one-line `DataError`s.

    A stream always yields an image that does not decode as an error item; a map-style
    dataset does so only when `tolerant` (`strop export`, which lists them), else its
    `DataError` stops the pass (eval and a feature cache need every image)."""
    text = str(spec)
    if streaming and not text.startswith(HUB_PREFIX):
        raise DataError(
            f"{text}: --streaming reads {HUB_PREFIX}owner/name datasets; local tar shards "
            "always stream and folders need no stream"
        )
    if streaming:
        return hub_stream(text[len(HUB_PREFIX) :], split, image_size, limit)
    if is_tar_spec(text):
        return WebDatasetImages(text, split, image_size, limit)
    from torch.utils.data import Subset

    built = build_dataset(spec, split, image_size)
    dataset: Any = DecodeTolerant(built) if tolerant else built
    if limit is not None and limit < len(dataset):
        return Subset(dataset, range(limit))
    return dataset


class DecodeTolerant(Dataset):
    """A map-style dataset whose images that fail to decode (a `DataError` of one item: a
    truncated or garbage file, a special file) come out as `{"index", "image_id", "error"}`
    items, which `collate_items` lists under `failed` instead of stopping the pass."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.files = getattr(dataset, "files", [])  # `check_image_names` reads them

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        try:
            return self.dataset[index]
        except DataError as exc:
            return {
                "index": int(index),
                "image_id": self.dataset.image_id(index),
                "error": str(exc),
            }


# --------------------------------------------------------------------------- hub streams


def hub_stream(name: str, split: str, image_size: int, limit: int | None = None) -> HubStreamImages:
    """A hub dataset (or anything `datasets.load_dataset` takes as a path: a local folder of
    parquet or tar files) in streaming mode: nothing is downloaded ahead of reading."""
    import datasets as hfd

    try:
        stream = hfd.load_dataset(name, split=split, streaming=True)
    except DATASETS_ERRORS as exc:
        raise datasets_error(f"{HUB_PREFIX}{name}", f"stream split {split!r}", exc) from None
    return HubStreamImages(stream, image_size, f"{HUB_PREFIX}{name} [{split}]", limit)


class HubStreamImages:
    """A `datasets.IterableDataset` with an image column, as a `RowStream`.

    Ids come from `__key__` (the webdataset builder), `image_id`, `image_filename` or
    `file_name`, else the row number; counts of objects from `n_objects`/`num_objects`.
    """

    def __init__(self, stream: Any, image_size: int, source: str, limit: int | None = None):
        import datasets as hfd

        self.source = source
        self.image_size = int(image_size)
        first = next(iter(stream), None)
        if first is None:
            raise DataError(f"{source}: the dataset has no rows")
        features = stream.features or {}
        image_cols = [k for k, v in features.items() if isinstance(v, hfd.Image)]
        image_cols += [k for k in ("image", "img", "jpg", "jpeg", "png", "webp") if k in first]
        if not image_cols:
            raise DataError(f"{source}: no image column; columns are {sorted(first)}")
        self.image_column = image_cols[0]
        if isinstance(features.get(self.image_column), hfd.Image):
            stream = stream.cast_column(self.image_column, hfd.Image(decode=False))
        self.stream = stream
        # the plan needs the length up front: one pass that decodes no image
        light = stream.remove_columns([self.image_column])
        self.n_rows = sum(1 for _ in itertools.islice(light, limit))
        self._cursor: tuple[int, Iterator[dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return self.n_rows

    def iter_rows(self, start: int = 0, stop: int | None = None) -> Iterator[Item]:
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        if self._cursor is None or self._cursor[0] > start:
            self._cursor = (0, iter(self.stream))
        position, rows = self._cursor
        while position < stop:
            row = next(rows)
            position += 1
            self._cursor = (position, rows)
            if position > start:
                yield self._item(position - 1, row)

    def _item(self, index: int, row: dict[str, Any]) -> Item:
        image_id = next(
            (
                Path(str(row[k])).stem if k != "__key__" else str(row[k])
                for k in ("__key__", "image_id", "image_filename", "file_name")
                if row.get(k)
            ),
            f"{index:06d}",
        )
        value = row[self.image_column]
        try:
            image = load_image(
                self._bytes(value), self.image_size, where=f"{self.source}: index {index}"
            )
        except DataError as exc:
            reason = str(exc).split(f"index {index} ", 1)[-1]
            return {"index": index, "image_id": image_id, "error": reason}
        n_objects = next(
            (int(row[k]) for k in ("n_objects", "num_objects") if isinstance(row.get(k), int)), -1
        )
        return {
            "image": image,
            "index": index,
            "image_id": image_id,
            "n_objects": n_objects,
            "scene": "",
        }

    def _bytes(self, value: Any) -> bytes:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        else:
            data, path = (value, None) if isinstance(value, bytes) else (None, value)
        if data:
            return bytes(data)
        if not path:
            raise DataError(f"{self.source} field {self.image_column}: empty image")
        from datasets.utils.file_utils import xopen

        with xopen(str(path), "rb") as handle:  # a remote file of the stream, read, not saved
            return handle.read()


# --------------------------------------------------------------------------- loading


class _Rows(IterableDataset):
    """Rows [start, stop) of a `RowStream` as a torch IterableDataset with a length."""

    def __init__(self, stream: RowStream, start: int, stop: int) -> None:
        self.stream, self.start, self.stop = stream, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Item]:
        return self.stream.iter_rows(self.start, self.stop)


def collate_items(items: Sequence[Item]) -> dict[str, Any]:
    """`collate` of the items that decoded; `failed` lists the others (image_id, reason)."""
    import torch

    good = [it for it in items if "error" not in it]
    failed = [
        {"image_id": str(it["image_id"]), "reason": str(it["error"])}
        for it in items
        if "error" in it
    ]
    if good:
        batch = collate(good)
    else:
        batch = {
            "image": torch.zeros(0),
            "index": torch.zeros(0, dtype=torch.long),
            "n_objects": torch.zeros(0, dtype=torch.long),
            "image_id": [],
            "scene": [],
        }
    batch["failed"] = failed
    return batch


def loader_for(data: Any, batch_size: int, rows: range | None = None, workers: int = 0) -> Any:
    """A DataLoader over `data` (or its `rows`), in order, batches from `collate_items`;
    `workers` decode a map-style dataset's images in processes that die with this one (a
    stream is read in this process: its order is the file's)."""
    from torch.utils.data import DataLoader, Subset

    from strop.data.workers import parent_watch

    if isinstance(data, RowStream):
        start, stop = (0, len(data)) if rows is None else (rows.start, rows.stop)
        rows_of = _Rows(data, start, stop)
        return DataLoader(rows_of, batch_size=batch_size, num_workers=0, collate_fn=collate_items)
    if rows is not None:
        data = Subset(data, rows)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_items,
        worker_init_fn=parent_watch() if workers > 0 else None,
    )
