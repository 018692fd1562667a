"""Export: encode a dataset split into programs and write `RUN/programs.parquet`.

What it reads comes through `strop.evaluation.run_inputs` (the run's model, its dataset, a
loader in order) and each batch becomes programs through `strop.evaluation.batch_encoding`;
the `--length-mode` values are `strop.model.length_modes`' (where `Strop.encode` finds them
too). The design of the length modes is recorded here, where programs are written.

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
- `head` lengths come from `Strop.head_lengths`, the one owner of the inference length rule;
  every mode's lengths from `strop.model.length_modes.program_lengths`, the one dispatch that
  `Strop.encode_features` uses too; the teacher and generator run once per batch and their
  outputs serve the codes, the search and the evaluation alike.
- Rows carry `image_id`, `split`, `codes`, `length`, `n_objects` (-1 when unknown) and the
  scene JSON when the dataset has scenes; run facts (K, length mode, teacher, checkpoint,
  image size) go into the Parquet metadata via `strop.runs.write_programs`. The file is a
  plain table, so `datasets.load_dataset("parquet", data_files=...)` reads it.
- Large exports (more rows than `--shard-rows`, or any `torchrun` launch) write the dataset
  form (`strop.evaluation.programs_dataset`): shards encoded one at a time, each from its own loader so
  batches never straddle a shard boundary (a resumed or multi-process export batches every
  image as a one-process run does, hence byte-identical shards); ranks take shards round-robin.
- Inputs come through `strop.data.inputs.open_input`: besides folders and `datasets` copies,
  WebDataset tar shards (a path or brace pattern) and `hf://` datasets in streaming mode
  (`streaming=True`), read in order as row streams. Their rows are planned like any split's
  (shard i = rows [i*N, (i+1)*N)), so torchrun and resume behave the same. An image of a
  stream that fails to decode is no row: it is counted and listed (id + reason) in the
  manifest (`failed_images`), or in the single file's metadata, and the export goes on.
- An export never silently drops programs another command wrote: when the output file holds
  splits this export leaves out, or more rows of a split than `--limit` keeps, it refuses
  (`ExportWouldDropPrograms`, before the model loads) and names the ways on: export every
  split, `--out` another file, or `--replace`. Grammar mining and decoding read the file, so
  a quiet 1,800 -> 200 rows would change their results without a word.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from strop.evaluation.batch_encoding import encode_batch
from strop.evaluation.distributed import Rank, current_rank
from strop.evaluation.programs_dataset import (
    DEFAULT_SHARD_ROWS,
    MANIFEST_FILE,
    PROGRAMS_LAYOUT,
    ShardWriter,
    dataset_dir_for,
    remove_dataset,
    write_manifest,
)
from strop.evaluation.run_inputs import (
    ReadArgs,
    Reading,
    check_image_names,
    input_spec,
    loader_over,
    open_split,
    plan_data,
    progress_batches,
)
from strop.evaluation.sharded_pass import Shard, run_sharded_pass
from strop.model.length_modes import (
    LengthMode,
    check_length_mode,
    parse_length_mode,
)
from strop.output_unit import check_writable
from strop.runs import (
    DATASET_FORMAT,
    Programs,
    RunFolder,
    RunFolderError,
    concat_programs,
    split_counts,
    write_programs,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from strop.model.network import Strop
    from strop.model.pretrained import TokenizerInfo


class ExportWouldDropPrograms(ValueError):
    """The output file holds programs this export would not write again."""


def held_programs(path: Path) -> dict[str, int]:
    """Rows per split that output `path` holds in either form: the single file `path` and the
    finished dataset beside it (`X.parquet` -> `X/`); unreadable files hold nothing to keep."""
    import pyarrow.parquet as pq

    held: dict[str, int] = {}
    if path.is_file():
        try:
            table = pq.read_table(path, columns=["split"])
        except Exception:  # an unreadable file holds nothing to keep
            table = None
        for name in table.column("split").to_pylist() if table is not None else []:
            held[str(name)] = held.get(str(name), 0) + 1
    folder = dataset_dir_for(path)
    if (folder / MANIFEST_FILE).is_file():
        try:
            for name, n in split_counts(folder).items():
                held[name] = held.get(name, 0) + n
        except RunFolderError:
            pass
    return held


def check_no_programs_dropped(
    path: Path, splits: list[str], limit: int | None, split_arg: str
) -> None:
    """Raise `ExportWouldDropPrograms` when writing `splits` (at most `limit` rows each) over
    `path` (either form) would lose rows it holds; an absent or unreadable file loses nothing."""
    held = held_programs(path)
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


# --------------------------------------------------------------------------- export


def encode_programs(
    model: Strop,
    loader: Any,
    mode: LengthMode,
    info: TokenizerInfo,
    dev: Any,
    split: str,
    description: str,
    progress: bool,
    failed: list[dict[str, str]] | None = None,
) -> Iterator[Programs]:
    """The programs of `loader`'s images, one batch at a time, rows tagged with `split`;
    images that failed to decode are appended to `failed` (image_id, reason)."""
    for batch in progress_batches(loader, description, progress):
        lost = batch.get("failed", [])
        if lost and failed is None:
            raise ValueError(f"{lost[0]['image_id']}: {lost[0]['reason']}")
        if failed is not None:
            failed.extend(lost)
        if not batch["image_id"]:
            continue
        enc = encode_batch(model, batch["image"].to(dev), mode, info.model.w_mse, info.model.l_min)
        lengths = enc.lengths.cpu().tolist()
        yield Programs(
            codes=[row[:n] for row, n in zip(enc.codes.cpu().numpy(), lengths, strict=True)],
            image_id=[str(i) for i in batch["image_id"]],
            split=[split] * len(lengths),
            n_objects=np.array([int(n) for n in batch["n_objects"]], dtype=np.int64),
            scene=[s or None for s in batch["scene"]],
            codebook_size=info.model.k,
        )


def export_programs(
    run_dir: str | os.PathLike[str],
    split: str = "val",
    length_mode: str | LengthMode | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    replace: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    streaming: bool = False,
    **read: Unpack[ReadArgs],
) -> Path:
    """Encode `split` of the run's dataset and write programs.parquet (default RUN/programs.parquet).

    `split` may list several splits, comma-separated (`train,val`): one file holds them all, each
    row tagged with its split, so the decoders can draw shots from train and queries from val.
    An existing file is overwritten only when that keeps all its rows, or with `replace`.

    More than `shard_rows` rows in all, or a `torchrun` launch, write the dataset form instead
    (`strop.evaluation.programs_dataset`: `X.parquet` -> folder `X/` of shards + manifest.json), one
    shard in memory at a time, resumable after a kill; the path returned is its manifest (on
    ranks other than 0, which write no manifest, the folder).

    `read`: the dataset, batches, limit, device and checkpoint (`run_inputs.ReadArgs`); its
    `data` may also be WebDataset tar shards (`shards/{split}-{0000..0099}.tar`) or, with
    `streaming`, an `hf://owner/name` dataset streamed instead of downloaded.
    """
    parse_length_mode(length_mode)  # a bad value fails before the model loads
    if shard_rows < 1:
        raise ValueError(f"export: --shard-rows {shard_rows}: expected a positive integer")
    splits = split_names(split)
    rank = current_rank()
    run, reading = RunFolder(Path(run_dir)), Reading(**read)
    target = Path(out) if out else run.programs_file
    model, info, dev = reading.model(run.path, rank.gpu)
    if not replace:
        check_no_programs_dropped(target, splits, reading.limit, split)
    check_writable(target / MANIFEST_FILE if target.is_dir() else target)  # before the encode
    mode = parse_length_mode(length_mode, info.length_mode)
    check_length_mode(mode, info.model, run.name)
    root = input_spec(run.path, info, reading.data)
    datasets = {
        name: open_split(root, name, info.model.image_size, reading.limit, streaming, tolerant=True)
        for name in splits
    }
    for dataset in datasets.values():
        check_image_names(dataset)
    meta = {
        "run": run.name,
        "length_mode": str(mode),
        "teacher": info.model.teacher,
        "checkpoint": reading.checkpoint,
        "weights": info.weights,
        "image_size": info.model.image_size,
        "l_max": info.model.l_max,
        "split": split,
    }

    def encode(
        name: str, rows: range | None, what: str, failed: list[dict[str, str]]
    ) -> Iterator[Programs]:
        loader = loader_over(datasets[name], reading.batch_size, rows)
        description = f"export {run.name} {what} [{mode}]"
        return encode_programs(model, loader, mode, info, dev, name, description, progress, failed)

    sizes = {name: len(d) for name, d in datasets.items()}
    if rank.distributed or sum(sizes.values()) > shard_rows or target.is_dir():
        plan = {
            "format": DATASET_FORMAT,
            "run": run.name,
            "data": plan_data(root),
            "checkpoint": reading.checkpoint,
            "weights": info.weights,
            "length_mode": str(mode),
            "splits": list(sizes.items()),
            "shard_rows": shard_rows,
            "batch_size": reading.batch_size,
            **({"streaming": True} if streaming else {}),
        }
        shard_meta = {**meta, "codebook_size": info.model.k}
        return _export_dataset(target, plan, shard_meta, rank, replace, encode)

    return _export_file(target, splits, root, meta, encode)


def split_names(split: str) -> list[str]:
    """The splits `--split` lists (comma-separated), each once."""
    splits = [s.strip() for s in split.split(",") if s.strip()]
    if not splits:
        raise ValueError(f"export: --split {split!r} names no split")
    twice = sorted({s for s in splits if splits.count(s) > 1})
    if twice:  # the same images twice: shots and test images could overlap downstream
        raise ValueError(f"export: --split {split!r} names {', '.join(twice)} twice")
    return splits


def _export_file(
    target: Path, splits: list[str], root: Path | str, meta: dict[str, Any], encode: Any
) -> Path:
    """The single-file form: every split's programs in one Parquet file (replacing a dataset
    form beside it); images that failed to decode are listed in its metadata."""
    failed: list[dict[str, str]] = []
    parts: list[Programs] = []
    for name in splits:
        lost: list[dict[str, str]] = []
        parts.extend(encode(name, None, name, lost))
        failed.extend({"split": name, **f} for f in lost)
    if not parts:
        raise ValueError(
            f"{root}: no image of split(s) {meta['split']} decoded ({len(failed)} failed)"
        )
    programs = concat_programs(parts, {**meta, "failed_images": failed} if failed else meta)
    repeated = [i for i, n in Counter(programs.image_id).items() if n > 1]
    if repeated:  # a scenes file listing an image twice
        raise ValueError(
            f"{root}: {len(repeated)} image ids appear more than once "
            f"({', '.join(repeated[:5])}); a programs file lists each image once"
        )
    path = write_programs(target, programs)
    remove_dataset(dataset_dir_for(target))  # the dataset form it replaces (checked above)
    return path


def _export_dataset(
    target: Path, plan: dict[str, Any], shard_meta: dict[str, Any], rank: Rank, replace: bool,
    encode: Any,
) -> Path:  # fmt: skip
    """This rank's shards of the dataset form (those not already finished; `plan["splits"]`
    lists (split, rows)), then, on rank 0 after every rank is done, the manifest
    (`strop.evaluation.sharded_pass`)."""
    folder = dataset_dir_for(target)
    sizes = dict(plan["splits"])

    def finish(shards: list[Shard]) -> Path:
        manifest = write_manifest(folder, shards, shard_meta)
        if target != folder and target.is_file():
            target.unlink()  # the single file this dataset replaces (checked before the encode)
        return manifest

    return run_sharded_pass(
        folder,
        plan,
        sizes,
        PROGRAMS_LAYOUT,
        MANIFEST_FILE,
        rank,
        replace,
        lambda split, rows, what, writer: encode(split, rows, what, writer.failed),
        open_shard=lambda shard: ShardWriter(folder, shard.name, shard_meta),
        finish=finish,
    )
