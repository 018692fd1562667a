"""Export: encode a dataset split into programs and write `RUN/programs.parquet`.

Also the shared plumbing of `strop eval` and `strop analyze`: the `--length-mode` parser,
device choice, the model + data loader of a run, and `encode_batch`, which turns a batch of
images into teacher features, quantised tokens, codes and the program length of each image.

Design decisions
- Length modes: `head` (the length head's rounded prediction, the paper's inference rule),
  `fixed` (all L_max tokens; the paper's Table 15 baseline) and `search:EPS`, the post-hoc
  search that ALIT/ElasticTok-style tokenizers run at inference (paper Sec. 3): the shortest
  prefix, from L_min up, whose alignment error `strop.model.losses.align_error` (the training
  objective's per-sample error, with the run's w_mse) is <= EPS; L_max when none is.
- The search interprets every (image, prefix length) pair in one batched call over
  `interpret_tokens` (masked prefixes, static shape), chunked to bound memory, instead of a
  loop over lengths.
- `head` lengths come from `Strop.head_lengths`, the one owner of the inference length rule
  (`Strop.encode_features` uses it too); the teacher and generator run once per batch and
  their outputs serve the codes, the search and the evaluation alike.
- Rows carry `image_id`, `split`, `codes`, `length`, `n_objects` (-1 when unknown) and the
  scene JSON when the dataset has scenes; run facts (K, length mode, teacher, checkpoint,
  image size) go into the Parquet metadata via `strop.runs.write_programs`. The file is a
  plain table, so `datasets.load_dataset("parquet", data_files=...)` reads it.
- An export never silently drops programs another command wrote: when the output file holds
  splits this export leaves out, or more rows of a split than `--limit` keeps, it refuses
  (`ExportWouldDropPrograms`, before the model loads) and names the ways on: export every
  split, `--out` another file, or `--replace`. Grammar mining and decoding read the file, so
  a quiet 1,800 -> 200 rows would change their results without a word.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop.runs import Programs, RunFolder, write_programs

if TYPE_CHECKING:
    import torch

    from strop.model import Strop
    from strop.training.config import RunConfig


class LengthModeError(ValueError):
    """A `--length-mode` value that cannot be used."""


class ExportWouldDropPrograms(ValueError):
    """The output file holds programs this export would not write again."""


def check_no_programs_dropped(
    path: Path, splits: list[str], limit: int | None, split_arg: str
) -> None:
    """Raise `ExportWouldDropPrograms` when writing `splits` (at most `limit` rows each) over
    `path` would lose rows it holds; an absent or unreadable file loses nothing."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return
    try:
        table = pq.read_table(path, columns=["split"])
    except Exception:  # an unreadable file holds nothing to keep
        return
    held: dict[str, int] = {}
    for name in table.column("split").to_pylist():
        held[str(name)] = held.get(str(name), 0) + 1
    dropped = {name: n for name, n in held.items() if name not in splits}
    if limit is not None:
        dropped.update(
            {name: n - limit for name, n in held.items() if name in splits and n > limit}
        )
    if not dropped:
        return
    facts = ", ".join(f"{name} {n}" for name, n in held.items())
    lost = (
        f"{sum(dropped.values())} of them ("
        + ", ".join(f"{k} {n}" for k, n in dropped.items())
        + ")"
    )
    every = ",".join(dict.fromkeys([*held, *splits]))
    raise ExportWouldDropPrograms(
        f"{path} holds {sum(held.values())} programs ({facts}); --split {split_arg}"
        + (f" --limit {limit}" if limit is not None else "")
        + f" would drop {lost}, which grammar mining and decoding read: export "
        f"--split {every}, write elsewhere with --out FILE, or pass --replace to overwrite"
    )


@dataclass(frozen=True)
class LengthMode:
    """How each program's length is chosen: `head`, `fixed` or `search` (with `eps`)."""

    kind: str
    eps: float | None = None

    def __str__(self) -> str:
        return f"search:{self.eps:g}" if self.kind == "search" else self.kind


def parse_length_mode(text: str | LengthMode | None, trained: str = "adaptive") -> LengthMode:
    """`head` | `fixed` | `search:EPS` (EPS a positive number) -> LengthMode.

    None picks the run's own mode: `fixed` for a run trained with
    `curriculum.length_mode=fixed` (its length head was never trained), else `head`.
    """
    if isinstance(text, LengthMode):
        return text
    if text is None:
        return LengthMode("fixed" if trained == "fixed" else "head")
    value = str(text).strip().lower()
    if value in ("head", "fixed"):
        return LengthMode(value)
    if value.startswith("search:"):
        raw = value.split(":", 1)[1]
        try:
            eps = float(raw)
        except ValueError:
            raise LengthModeError(
                f"--length-mode {text}: EPS must be a number, got {raw!r}"
            ) from None
        if not (eps > 0 and math.isfinite(eps)):
            raise LengthModeError(
                f"--length-mode {text}: EPS must be a positive number, got {raw!r}"
            )
        return LengthMode("search", eps)
    raise LengthModeError(
        f"--length-mode {text!r}: expected head, fixed or search:EPS (e.g. search:0.2)"
    )


def resolve_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


# --------------------------------------------------------------------------- run + data


def load_run_model(
    run_dir: str | os.PathLike[str], checkpoint: str = "last", device: str = "auto"
) -> tuple[Strop, RunConfig, Any]:
    """(model in eval mode on its device, RunConfig, torch.device)."""
    from strop.training.checkpoint import load_model

    dev = resolve_device(device)
    model, cfg = load_model(run_dir, which=checkpoint, map_location=dev)
    return model, cfg, dev


def dataset_path(
    run_dir: str | os.PathLike[str], cfg: RunConfig, data: str | os.PathLike[str] | None
) -> Path:
    path = Path(data) if data else Path(cfg.data.path) if cfg.data.path else None
    if path is None:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: data.path is empty; pass --data DIR")
    if not path.exists():
        hint = "" if data else " (data.path in config.json; pass --data DIR to point elsewhere)"
        raise FileNotFoundError(f"{path}: dataset folder not found{hint}")
    return path


def make_loader(path: Path, split: str, image_size: int, batch_size: int, limit: int | None = None):
    """A DataLoader over the first `limit` images of `split`, in dataset order."""
    from torch.utils.data import DataLoader, Dataset, Subset

    from strop.data.datasets import build_dataset, collate

    dataset: Dataset = build_dataset(path, split, image_size)
    n_images = len(dataset)  # type: ignore[arg-type]  # torch's Dataset stub has no __len__
    if limit is not None and limit < n_images:
        dataset, n_images = Subset(dataset, range(limit)), limit
    if n_images == 0:
        raise ValueError(f"{path}: split {split!r} has no images")
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate
    )


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


# --------------------------------------------------------------------------- encoding


@dataclass
class EncodedBatch:
    """One batch through teacher and generator; `codes` is (B, L_max) padded with -1."""

    feats: torch.Tensor
    tokens: torch.Tensor
    codes: torch.Tensor
    lengths: torch.Tensor
    head_lengths: torch.Tensor | None = None
    search_errors: torch.Tensor | None = None


def search_lengths(
    model: Strop,
    feats: torch.Tensor,
    tokens: torch.Tensor,
    eps: float,
    w_mse: float,
    l_min: int,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortest prefix in [l_min, L_max] with align error <= eps (L_max if none).

    Returns (lengths (B,) long, errors (B, L_max - l_min + 1)) where errors[:, i] is the
    error at prefix length l_min + i.
    """
    import torch

    from strop.model.losses import align_error

    b, l_max = tokens.shape[0], tokens.shape[1]
    candidates = torch.arange(l_min, l_max + 1, device=tokens.device)
    img_idx = torch.arange(b, device=tokens.device).repeat_interleave(len(candidates))
    len_idx = candidates.repeat(b)
    errors = torch.empty(b * len(candidates), device=tokens.device)
    for start in range(0, len(img_idx), chunk):
        sl = slice(start, start + chunk)
        field = model.interpret_tokens(tokens[img_idx[sl]], len_idx[sl])
        errors[sl] = align_error(field, feats[img_idx[sl]], w_mse).float()
    errors = errors.view(b, len(candidates))
    ok = errors <= eps
    first = torch.where(
        ok.any(dim=1),
        ok.float().argmax(dim=1),
        torch.full((b,), len(candidates) - 1, device=tokens.device),
    )
    return candidates[first].long(), errors


def pad_codes(codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Codes with positions >= length set to -1."""
    import torch

    pos = torch.arange(codes.shape[1], device=codes.device).unsqueeze(0)
    return torch.where(pos < lengths.unsqueeze(1), codes, torch.full_like(codes, -1))


def encode_batch(
    model: Strop, images: torch.Tensor, mode: LengthMode, w_mse: float, l_min: int
) -> EncodedBatch:
    """Teacher features, generator output and each image's program under `mode`."""
    import torch

    with torch.no_grad():
        feats = model.teacher_features(images)
        gen = model.generate(feats)
        # `Strop.head_lengths` owns the inference rule clip(round(L_hat), L_min, L_max)
        head = model.head_lengths(feats).long()
        if mode.kind == "search":
            assert mode.eps is not None  # parse_length_mode sets it for "search"
            lengths, errors = search_lengths(model, feats, gen.tokens, mode.eps, w_mse, l_min)
            return EncodedBatch(
                feats, gen.tokens, pad_codes(gen.codes, lengths), lengths, head, errors
            )
        lengths = head if mode.kind == "head" else torch.full_like(head, gen.codes.shape[1])
    return EncodedBatch(feats, gen.tokens, pad_codes(gen.codes, lengths), lengths)


# --------------------------------------------------------------------------- export


def export_programs(
    run_dir: str | os.PathLike[str],
    split: str = "val",
    length_mode: str | LengthMode | None = None,
    data: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    device: str = "auto",
    checkpoint: str = "last",
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    replace: bool = False,
) -> Path:
    """Encode `split` of the run's dataset and write programs.parquet (default RUN/programs.parquet).

    `split` may list several splits, comma-separated (`train,val`): one file holds them all, each
    row tagged with its split, so the decoders can draw shots from train and queries from val.
    An existing file is overwritten only when that keeps all its rows, or with `replace`.
    """
    parse_length_mode(length_mode)  # a bad value fails before the model loads
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise ValueError(f"export: --split {split!r} names no split")
    run = RunFolder(Path(run_dir))
    target = Path(out) if out else run.programs_path
    if not replace:
        check_no_programs_dropped(target, splits, limit, split)
    model, cfg, dev = load_run_model(run.path, checkpoint, device)
    mode = parse_length_mode(length_mode, cfg.curriculum.length_mode)
    root = dataset_path(run.path, cfg, data)
    codes: list[np.ndarray] = []
    image_id: list[str] = []
    split_of: list[str] = []
    n_objects: list[int] = []
    scenes: list[str | None] = []
    for name in splits:
        loader = make_loader(root, name, cfg.model.image_size, batch_size, limit)
        for batch in progress_batches(loader, f"export {run.name} {name} [{mode}]", progress):
            enc = encode_batch(
                model, batch["image"].to(dev), mode, cfg.model.w_mse, cfg.model.l_min
            )
            lengths = enc.lengths.cpu().tolist()
            for row, length in zip(enc.codes.cpu().numpy(), lengths, strict=True):
                codes.append(row[:length])
            image_id += [str(i) for i in batch["image_id"]]
            split_of += [name] * len(lengths)
            n_objects += [int(n) for n in batch["n_objects"]]
            scenes += [s or None for s in batch["scene"]]
    programs = Programs(
        codes=codes,
        image_id=image_id,
        split=split_of,
        n_objects=np.array(n_objects, dtype=np.int64),
        scene=scenes,
        codebook_size=cfg.model.k,
        meta={
            "run": run.name,
            "length_mode": str(mode),
            "teacher": cfg.model.teacher,
            "checkpoint": checkpoint,
            "image_size": cfg.model.image_size,
            "l_max": cfg.model.l_max,
            "split": split,
        },
    )
    return write_programs(target, programs)
