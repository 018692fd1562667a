"""What a command over a trained run reads: the run's model on its device, the dataset its
config names (or `--data`), a split of it in order, a loader over it, and a progress bar over
the loader. Shared by `export`, `evaluate`, `sweep`, `analyze`, `scene_probes` and
`cache-features` (`feature_shards`); how a batch becomes programs is `batch_encoding`'s job.
`ReadArgs`/`Reading` are the keywords `evaluate_run`, `sweep_run` and `export_programs` share.
Also the input checks of the sharded passes: `plan_data` (what a resumable plan records of the
input) and `check_image_names` (image ids are text).

Design decisions
- A split is read in dataset order (no shuffle), so two commands over the same split see the
  same images in the same batches (`eval`'s and `export`'s rows agree).
- Inputs come through `strop.data.inputs.open_input`: besides folders and `datasets` copies,
  WebDataset tar shards and `hf://` datasets (streamed with `streaming=True`); an empty split is
  refused here, naming the dataset and the split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from strop.devices import resolve_device
from strop.output_unit import shown

if TYPE_CHECKING:
    import torch

    from strop.model.network import Strop
    from strop.model.pretrained import TokenizerInfo


def load_run_model(
    run_dir: str | os.PathLike[str],
    checkpoint: str = "last",
    device: str = "auto",
    gpu: int | None = None,
) -> tuple[Strop, TokenizerInfo, torch.device]:
    """(model in eval mode on its device, what it was trained as, torch.device) of a run folder
    at `checkpoint`, or of a folder written by `strop export-model`; `gpu` is the GPU `auto`
    means under torchrun (`strop.evaluation.distributed.Rank.gpu`)."""
    from strop.model.network import Strop

    dev = resolve_device(device, gpu)
    model, info = Strop.load_tokenizer(run_dir, checkpoint, map_location=dev)
    return model, info, dev


class ReadArgs(TypedDict, total=False):
    """The keywords `evaluate_run`, `sweep_run` and `export_programs` take alike (their
    `**read`): which weights (`checkpoint`) on which `device`, which dataset (`data`; default
    the run's), how many images at a time and at most (`batch_size`, `limit`)."""

    data: str | os.PathLike[str] | None
    batch_size: int
    limit: int | None
    device: str
    checkpoint: str


@dataclass(frozen=True)
class Reading:
    """`ReadArgs` with their defaults, built once from a function's `**read`."""

    data: str | os.PathLike[str] | None = None
    batch_size: int = 64
    limit: int | None = None
    device: str = "auto"
    checkpoint: str = "last"

    def model(
        self, run_dir: str | os.PathLike[str], gpu: int | None = None
    ) -> tuple[Strop, TokenizerInfo, torch.device]:
        """`load_run_model` at this checkpoint on this device."""
        return load_run_model(run_dir, self.checkpoint, self.device, gpu)

    def loader(self, run_dir: str | os.PathLike[str], info: TokenizerInfo, split: str) -> Any:
        """`make_loader` over `split` of this dataset (`dataset_path`), these batches, limit."""
        path = dataset_path(run_dir, info, self.data)
        return make_loader(path, split, info.model.image_size, self.batch_size, self.limit)


def input_spec(
    run_dir: str | os.PathLike[str], info: TokenizerInfo, data: str | os.PathLike[str] | None
) -> Path | str:
    """What an export reads: `dataset_path`, or, as given, an `hf://` id or a tar pattern
    (`strop.data.inputs.open_input` checks those)."""
    from strop.data.inputs import is_input_spec

    if data and is_input_spec(data):
        return str(data)
    if not data and info.data_path and is_input_spec(info.data_path):
        return info.data_path
    return dataset_path(run_dir, info, data)


def dataset_path(
    run_dir: str | os.PathLike[str], info: TokenizerInfo, data: str | os.PathLike[str] | None
) -> Path:
    """The dataset folder: `data` when given, else the one the run was trained on."""
    path = Path(data) if data else Path(info.data_path) if info.data_path else None
    where = "training.data_path" if info.exported else "data.path"
    if path is None:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: {where} is empty; pass --data DIR")
    if not path.exists():
        hint = "" if data else f" ({where} in config.json; pass --data DIR to point elsewhere)"
        raise FileNotFoundError(f"{path}: dataset folder not found{hint}")
    return path


def open_split(
    path: Path | str,
    split: str,
    image_size: int,
    limit: int | None = None,
    streaming: bool = False,
    tolerant: bool = False,
) -> Any:
    """The first `limit` images of `split`, in dataset order: a torch Dataset or a row
    stream (`strop.data.inputs.open_input`; `tolerant`: images that fail to decode become
    error items for the caller to list, as `strop export` does)."""
    from strop.data.inputs import open_input

    dataset = open_input(
        path, split, image_size, streaming=streaming, limit=limit, tolerant=tolerant
    )
    if len(dataset) == 0:
        raise ValueError(f"{path}: split {split!r} has no images")
    return dataset


def loader_over(dataset: Any, batch_size: int, rows: range | None = None, workers: int = 0) -> Any:
    """A DataLoader over `dataset` (or its `rows`), in order; batches list the images that
    failed to decode under `failed` (`strop.data.inputs.collate_items`); `workers` decode
    images in worker processes that die with this one."""
    from strop.data.inputs import loader_for

    return loader_for(dataset, batch_size, rows, workers)


def make_loader(path: Path, split: str, image_size: int, batch_size: int, limit: int | None = None):
    """A DataLoader over the first `limit` images of `split`, in dataset order."""
    return loader_over(open_split(path, split, image_size, limit), batch_size)


def progress_batches(loader, description: str, enabled: bool = True) -> Iterator[dict[str, Any]]:
    """Iterate a loader under a rich progress bar counting images."""
    if not enabled:
        yield from loader
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=len(loader.dataset))
        for batch in loader:
            yield batch
            bar.advance(task, len(batch["image"]))


def plan_data(root: Path | str) -> str:
    """The input as the plan records it: a resume from another folder must name the same
    files (a relative tar pattern made absolute; an `hf://` id as given)."""
    from strop.data.datasets import HUB_PREFIX

    if isinstance(root, str):
        return root if root.startswith(HUB_PREFIX) else os.path.abspath(root)
    return str(root.resolve())


def check_image_names(dataset: Any) -> None:
    """Image ids are the file names' stems, stored as text: a name that is not UTF-8 is
    refused before the encode, naming the file (its odd bytes escaped)."""
    files = getattr(getattr(dataset, "dataset", dataset), "files", [])
    for path in files:
        try:
            path.stem.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{shown(path)}: file name is not valid UTF-8 (image ids are stored as text); "
                "rename the file"
            ) from None
