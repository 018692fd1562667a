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
- Budgets (FlexTok/One-D-Piece-style): `prefix:N` keeps exactly N tokens for every image,
  `cap:N` the head's length but at most N. N is checked against the run's [L_min, L_max]
  once its config is read (`check_length_mode`), so a bad N exits 2 before any image is
  encoded. `quality:EPS` asks the eps-conditioned length head (`strop.model.quality_head`)
  for the length that meets EPS in one pass; a run trained without it is refused the same way.
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
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop.output_unit import check_writable, shown
from strop.runs import Programs, RunFolder, write_programs

if TYPE_CHECKING:
    import torch

    from strop.model.config import ModelConfig
    from strop.model.network import Strop
    from strop.model.pretrained import TokenizerInfo


class LengthModeError(ValueError):
    """A `--length-mode` value that cannot be used."""


#: The modes that take an integer budget N and those that take a target error EPS.
BUDGET_KINDS = ("prefix", "cap")
EPS_KINDS = ("search", "quality")


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
    """How each program's length is chosen: `head`, `fixed`, `prefix`/`cap` (with `n`) or
    `search`/`quality` (with `eps`)."""

    kind: str
    eps: float | None = None
    n: int | None = None

    def __str__(self) -> str:
        if self.kind in EPS_KINDS:
            return f"{self.kind}:{self.eps:g}"
        if self.kind in BUDGET_KINDS:
            return f"{self.kind}:{self.n}"
        return self.kind


_EXPECTED = "expected head, fixed, prefix:N, cap:N, search:EPS or quality:EPS (e.g. search:0.2)"
#: What an N or an EPS may be spelled as: plain ASCII decimals. Python's int() and float()
#: also take "4_0" (40), "nan", "inf" and non-ASCII digits, none of which a user means.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_eps(raw: str, option: str) -> float:
    """One target error EPS as typed (`option` names it in errors): a positive, finite
    decimal number, else `LengthModeError`."""
    text = raw.strip()
    if not _NUMBER.fullmatch(text):
        raise LengthModeError(f"{option}: EPS must be a number, got {raw!r}")
    eps = float(text)
    if not (eps > 0 and math.isfinite(eps)):
        raise LengthModeError(f"{option}: EPS must be a positive number, got {raw!r}")
    return eps


def parse_eps_values(text: str | None) -> list[float] | None:
    """`--quality-eps` (comma-separated EPS values) -> at least two distinct values, sorted
    (a calibration curve is read in EPS order; a repeated value adds nothing to it)."""
    if text is None:
        return None
    parts = [part for part in text.split(",") if part.strip()]
    values = sorted({parse_eps(part, f"--quality-eps {text}") for part in parts})
    if len(values) < 2:
        raise LengthModeError(
            f"--quality-eps {text}: expected at least two distinct positive numbers"
        )
    return values


def parse_length_mode(text: str | LengthMode | None, trained: str = "adaptive") -> LengthMode:
    """`head` | `fixed` | `prefix:N` | `cap:N` | `search:EPS` | `quality:EPS` -> LengthMode.

    N must be a positive integer (its range is the run's, see `check_length_mode`), EPS a
    positive number. None picks the run's own mode: `fixed` for a run trained with
    `curriculum.length_mode=fixed` (its length head was never trained), else `head`.
    """
    if isinstance(text, LengthMode):
        return text
    if text is None:
        return LengthMode("fixed" if trained == "fixed" else "head")
    value = str(text).strip().lower()
    if value in ("head", "fixed"):
        return LengthMode(value)
    kind, sep, raw = value.partition(":")
    if sep and kind in BUDGET_KINDS:
        if not _INTEGER.fullmatch(raw.strip()):
            raise LengthModeError(f"--length-mode {text}: N must be an integer, got {raw!r}")
        n = int(raw)
        if n < 1:
            raise LengthModeError(f"--length-mode {text}: N must be at least 1, got {n}")
        return LengthMode(kind, n=n)
    if sep and kind in EPS_KINDS:
        return LengthMode(kind, parse_eps(raw, f"--length-mode {text}"))
    raise LengthModeError(f"--length-mode {text!r}: {_EXPECTED}")


def check_length_mode(mode: LengthMode, model_cfg: ModelConfig, run: str = "the run") -> None:
    """Refuse a mode this run cannot honour: N outside [L_min, L_max], or `quality:EPS`
    on a run trained without the eps-conditioned head (`LengthModeError`, exit 2)."""
    lo, hi = model_cfg.l_min, model_cfg.l_max
    if mode.n is not None and not lo <= mode.n <= hi:
        raise LengthModeError(
            f"--length-mode {mode}: N must be in [L_min, L_max] = [{lo}, {hi}] for {run}, got {mode.n}"
        )
    if mode.kind == "quality" and not model_cfg.quality_head:
        raise LengthModeError(
            f"--length-mode {mode}: {run} has no eps-conditioned length head "
            "(train it with --set model.quality_head=true)"
        )


def check_quality_eps(values: list[float] | None, model_cfg: ModelConfig, run: str) -> None:
    """Refuse `--quality-eps` for a run without the eps-conditioned head (it would be
    ignored without a word) and values that are not positive finite numbers."""
    if values is None:
        return
    if not model_cfg.quality_head:
        raise LengthModeError(
            f"--quality-eps: {run} has no eps-conditioned length head, so eval.json gets no "
            "quality_control block (train it with --set model.quality_head=true)"
        )
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad or len(values) < 2:
        raise LengthModeError(
            f"--quality-eps: expected at least two positive finite numbers, got {list(values)}"
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
) -> tuple[Strop, TokenizerInfo, Any]:
    """(model in eval mode on its device, what it was trained as, torch.device) of a run folder
    at `checkpoint`, or of a folder written by `strop export-model`."""
    from strop.model.network import Strop

    dev = resolve_device(device)
    model, info = Strop.load_tokenizer(run_dir, checkpoint, map_location=dev)
    return model, info, dev


def dataset_path(
    run_dir: str | os.PathLike[str], info: TokenizerInfo, data: str | os.PathLike[str] | None
) -> Path:
    path = Path(data) if data else Path(info.data_path) if info.data_path else None
    where = "training.data_path" if info.exported else "data.path"
    if path is None:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: {where} is empty; pass --data DIR")
    if not path.exists():
        hint = "" if data else f" ({where} in config.json; pass --data DIR to point elsewhere)"
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
    from strop.model.quality_head import shortest_reaching

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
    return shortest_reaching(errors, eps, l_min), errors


def pad_codes(codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Codes with positions >= length set to -1."""
    import torch

    pos = torch.arange(codes.shape[1], device=codes.device).unsqueeze(0)
    return torch.where(pos < lengths.unsqueeze(1), codes, torch.full_like(codes, -1))


def mode_lengths(
    model: Strop, feats: torch.Tensor, head: torch.Tensor, mode: LengthMode
) -> torch.Tensor:
    """Each image's length under a one-pass mode (all but `search`), from the head's lengths."""
    import torch

    if mode.kind == "head":
        return head
    if mode.kind == "fixed":
        return torch.full_like(head, model.cfg.l_max)
    if mode.kind == "prefix":
        assert mode.n is not None  # parse_length_mode sets it
        return torch.full_like(head, mode.n)
    if mode.kind == "cap":
        assert mode.n is not None
        return head.clamp(max=mode.n)
    if mode.kind == "quality":
        assert mode.eps is not None
        return model.quality_lengths(feats, mode.eps).long()
    raise LengthModeError(f"--length-mode {mode}: not a one-pass mode")


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
        lengths = mode_lengths(model, feats, head, mode)
    return EncodedBatch(feats, gen.tokens, pad_codes(gen.codes, lengths), lengths, head)


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
    twice = sorted({s for s in splits if splits.count(s) > 1})
    if twice:  # the same images twice: shots and test images could overlap downstream
        raise ValueError(f"export: --split {split!r} names {', '.join(twice)} twice")
    run = RunFolder(Path(run_dir))
    target = Path(out) if out else run.programs_path
    model, cfg, dev = load_run_model(run.path, checkpoint, device)  # not a run: says so first
    if not replace:
        check_no_programs_dropped(target, splits, limit, split)
    check_writable(target)  # before the encode, not after it
    mode = parse_length_mode(length_mode, cfg.length_mode)
    check_length_mode(mode, cfg.model, run.name)
    root = dataset_path(run.path, cfg, data)
    loaders = [make_loader(root, name, cfg.model.image_size, batch_size, limit) for name in splits]
    for loader in loaders:
        check_image_names(loader.dataset)
    codes: list[np.ndarray] = []
    image_id: list[str] = []
    split_of: list[str] = []
    n_objects: list[int] = []
    scenes: list[str | None] = []
    for name, loader in zip(splits, loaders, strict=True):
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
    repeated = [i for i, n in Counter(image_id).items() if n > 1]
    if repeated:  # a scenes file listing an image twice
        raise ValueError(
            f"{root}: {len(repeated)} image ids appear more than once "
            f"({', '.join(repeated[:5])}); a programs file lists each image once"
        )
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
