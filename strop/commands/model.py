"""`strop model-info`, `strop cache-features` and `strop export-model`.

`model-info` needs no weights: the model is built on the meta device and the teacher is
counted from its architecture config (`docs/FORMATS.md`). `cache-features` runs the frozen
teacher over a dataset split once and stores fp16 features (strop.model.feature_cache). Torch is
imported inside the command bodies so `strop --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from strop.cli_app import Commands, exit_on, one_line
from strop.cli_options import Arg, Flag, command
from strop.devices import device_option

commands = Commands()

TEACHER_HELP = "Teacher: dinov3-s, dinov3-b, dinov3-l, random-vit or pixels."
CHECKPOINT_HELP = "last, a step number, or a .pt path."


def _config(preset: str, teacher: str, k: int | None, l_max: int | None, image_size: int | None):
    from strop.model import ModelConfig

    overrides: dict[str, str | int] = {"teacher": teacher}
    for key, value in (("k", k), ("l_max", l_max), ("image_size", image_size)):
        if value is not None:
            overrides[key] = value
    from pydantic import ValidationError

    try:
        return ModelConfig.from_preset(preset, **overrides)
    except ValidationError as err:
        # pydantic's multi-line report -> one line naming each field and value
        raise typer.BadParameter(one_line(err)) from None
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


class ModelInfoOptions(BaseModel):
    """`strop model-info`'s options."""

    preset: Annotated[str, Flag()] = Field("S", description="Architecture preset: tiny, S or M.")
    teacher: Annotated[str, Flag()] = Field("dinov3-s", description=TEACHER_HELP)
    k: Annotated[int | None, Flag(min=2)] = Field(
        None, description="Codebook size K (default: the preset's)."
    )
    l_max: Annotated[int | None, Flag(min=1)] = Field(
        None, description="Longest program L_max (default: the preset's)."
    )
    image_size: Annotated[int | None, Flag(min=16)] = Field(
        None, description="Input size in pixels (default: the preset's)."
    )
    as_json: Annotated[bool, Flag("--json")] = Field(
        False, description="Print one JSON object instead of a table."
    )


def model_info(values: dict[str, Any]) -> None:
    """Parameter counts, FLOPs per image and bits per program of a configuration (no weights needed)."""
    from strop.model import describe

    o = ModelInfoOptions.model_validate(values)
    info = describe(_config(o.preset, o.teacher, o.k, o.l_max, o.image_size))
    if o.as_json:
        typer.echo(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"STROP-{info['preset']} on {info['teacher']}", show_header=False)
    rows = [
        (
            "teacher",
            info["teacher"]
            + (
                "  (offline stand-in, not DINO)"
                if info["teacher"] in ("random-vit", "pixels")
                else ""
            ),
        ),
        (
            "width d / layers / heads / FFN",
            f"{info['d']} / {info['layers']} / {info['heads']} / {info['ffn']}",
        ),
        (
            "image / patch / tokens x width",
            f"{info['image_size']} / {info['patch_size']} / {info['n_patches']} x {info['teacher_dim']}",
        ),
        ("K / L_max / code dim", f"{info['k']} / {info['l_max']} / {info['code_dim']}"),
        ("trainable params", f"{info['trainable_params'] / 1e6:.2f} M"),
        ("teacher params (frozen)", f"{info['teacher_params'] / 1e6:.2f} M"),
        ("total params", f"{info['total_params'] / 1e6:.2f} M"),
        ("pixel probe params", f"{info['pixel_probe_params'] / 1e6:.2f} M"),
        (
            "forward FLOPs / image",
            f"{info['flops_per_image'] / 1e9:.2f} G (+ teacher {info['teacher_flops_per_image'] / 1e9:.2f} G)",
        ),
        ("bits per program", f"{info['bits_per_program']:.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


commands.command("model-info")(command(model_info, ModelInfoOptions))


class CacheFeaturesOptions(BaseModel):
    """`strop cache-features`'s options."""

    data: Annotated[str, Flag()] = Field(
        description="Dataset folder (CLEVR layout, synthetic, or images), hf://owner/name, or "
        "WebDataset tar shards (a path or brace pattern; {split} becomes each split)."
    )
    teacher: Annotated[str, Flag()] = Field("dinov3-s", description=TEACHER_HELP)
    out: Annotated[Path, Flag()] = Field(
        description="Cache folder (index.json + <split>-NNNNN.npy shards)."
    )
    split: Annotated[list[str], Flag(metavar="SPLIT")] = Field(
        ["train", "val"], description="Split(s) to cache; repeat the flag for several."
    )
    image_size: Annotated[int, Flag(min=16)] = Field(
        224, description="Input size in pixels (the model's image_size)."
    )
    teacher_path: Annotated[Path | None, Flag()] = Field(
        None, description="Local folder with DINOv3 weights."
    )
    patch_size: Annotated[int, Flag(min=1)] = Field(
        16, description="Patch size of random-vit / pixels teachers."
    )
    batch_size: Annotated[int, Flag(min=1)] = Field(32, description="Images per teacher forward.")
    workers: Annotated[int, Flag(min=0)] = Field(2, description="DataLoader worker processes.")
    device: Annotated[str, Flag(callback=device_option)] = Field(
        "auto", description="auto, cpu, cuda, cuda:N or mps."
    )
    shard_rows: Annotated[int, Flag(min=1)] = Field(
        10_000,
        description="Images per feature shard (<split>-NNNNN.npy); a rerun after a kill "
        "resumes at the first unfinished shard.",
    )
    replace: Annotated[bool, Flag()] = Field(
        False, description="Start over in a folder another cache-features run wrote."
    )
    progress: Annotated[bool, Flag("--progress/--no-progress")] = Field(
        True, description="Show a progress bar."
    )


def cache_features(values: dict[str, Any]) -> None:
    """Run the frozen teacher over dataset splits once and store fp16 features for training.

    Writes a sharded cache: rerun the same command after a kill to resume it. Under
    `torchrun --nproc_per_node N -m strop.cli cache-features ...` each process writes its
    share of the shards and rank 0 writes index.json."""
    from strop.evaluation.feature_shards import cache_features as write_cache
    from strop.model.feature_cache import FeatureCacheDataset
    from strop.model.teachers import build_teacher

    o = CacheFeaturesOptions.model_validate(values)
    out, split = o.out, o.split
    patch_size = 16 if o.teacher.startswith("dinov3") else o.patch_size
    # TeacherNotFoundError (a FileNotFoundError), FeatureCacheError and DataError (ValueErrors),
    # a folder that cannot be written (OutputUnitError, a ValueError): the work failed (exit 1).
    with exit_on(failed=(FileNotFoundError, ValueError)):
        model = build_teacher(o.teacher, o.teacher_path, o.image_size, patch_size)
        path = write_cache(
            o.data,
            split,
            model,
            out,
            o.image_size,
            o.batch_size,
            o.workers,
            o.device,
            o.shard_rows,
            o.replace,
            o.progress,
        )
        if path.name != "index.json":
            return  # a rank other than 0: rank 0 reports
        for name in split:
            cached = FeatureCacheDataset(out, name)
            n = len(cached.shards)
            typer.echo(
                f"{name}: {len(cached)} images -> {out} ({n} shard{'s' * (n != 1)}, "
                f"teacher {model.teacher_name})"
            )


def _repo_id_option(repo_id: str | None) -> str | None:
    """A typer callback for `--push-to-hub`: an id the hub would refuse is a usage error
    (exit 2), before the export is written."""
    if repo_id is None:
        return None
    from strop.model.pretrained import PretrainedError, check_repo_id

    try:
        return check_repo_id(repo_id)
    except PretrainedError as err:
        raise typer.BadParameter(str(err)) from None


commands.command("cache-features")(command(cache_features, CacheFeaturesOptions))


class RunFolder(BaseModel):
    """The run folder a command reads (`strop eval RUN`)."""

    run: Annotated[Path, Arg(show_default=False)] = Field(
        description="Run folder (holds config.json and checkpoints/)."
    )


class ExportModelOptions(RunFolder):
    """`strop export-model`'s options."""

    out: Annotated[Path, Flag()] = Field(description="Folder to write the tokenizer into.")
    checkpoint: Annotated[str, Flag()] = Field("last", description=CHECKPOINT_HELP)
    push_to_hub: Annotated[str | None, Flag(callback=_repo_id_option)] = Field(
        None,
        description="Also upload the folder to this Hugging Face repo id (owner/name); needs "
        "`huggingface-cli login` or HF_TOKEN.",
    )
    private: Annotated[bool | None, Flag("--private/--public")] = Field(
        None, description="Visibility of a repo --push-to-hub creates."
    )


def export_model_cmd(values: dict[str, Any]) -> None:
    """Write a shareable tokenizer: model.safetensors, config.json and a model card (README.md).

    Load it with `strop.Strop.from_pretrained(DIR_or_hub_id)`; `strop export` and `strop eval`
    take the folder where they take a run folder."""
    from strop.model.sharing import export_model
    from strop.model.weights import CheckpointError

    # A run folder, checkpoint or output folder that cannot be used (CheckpointError,
    # PretrainedError, a ValueError) or a failed upload (an OSError from huggingface_hub's
    # client): the work failed (exit 1).
    o = ExportModelOptions.model_validate(values)
    with exit_on(failed=(CheckpointError, ValueError, OSError)):
        folder, url, replaced = export_model(
            o.run, o.out, o.checkpoint, o.push_to_hub, private=o.private
        )
    # Two exports into one folder take turns (the unit's lock): the later one says so.
    verb = "replaced the tokenizer in" if replaced else "wrote"
    typer.echo(f"{verb} {folder} (model.safetensors, config.json, README.md)")
    if url:
        typer.echo(f"pushed to {o.push_to_hub}: {url}")


commands.command("export-model")(command(export_model_cmd, ExportModelOptions))
