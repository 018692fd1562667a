"""`strop data ...`: make and inspect scene data.

`clevr-synth` renders CLEVR-like scenes (strop.data.renderer) in CLEVR's folder layout;
`inspect` opens any dataset folder the loaders understand and reports what it found, so a
broken download fails here, with one line naming the file, rather than mid-training.
Torch is imported only inside `inspect`, so `strop --help` stays fast.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, Field

from strop.cli_app import Commands, exit_on
from strop.cli_options import Arg, Flag, command

#: Largest `--size`: a render holds several float images of (2 x size)^2 pixels (the
#: supersampled z-buffer and shading layers); CLEVR's own images are 480 x 320.
MAX_SIZE = 2048

commands = Commands("data", help="Scene data: render CLEVR-like scenes, check dataset folders.")


def _parse_splits(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"--splits: expected three comma-separated fractions, got {text!r}"
        ) from None
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts) or sum(parts) <= 0:
        raise typer.BadParameter(
            f"--splits: expected three finite, non-negative fractions (train,val,test), got {text!r}"
        )
    return parts[0], parts[1], parts[2]


class SynthOptions(BaseModel):
    """`strop data clevr-synth`'s options."""

    n: Annotated[int, Flag(min=1)] = Field(1000, description="Number of scenes over all splits.")
    size: Annotated[int, Flag(min=8, max=MAX_SIZE)] = Field(
        128, description="Image side in pixels (square)."
    )
    seed: Annotated[int, Flag()] = Field(
        0, description="Random seed; the same seed gives the same bytes."
    )
    out: Annotated[Path, Flag()] = Field(Path("data/clevr-synth"), description="Output folder.")
    splits: Annotated[str, Flag()] = Field(
        "0.8,0.1,0.1", description="train,val,test fractions (normalised to sum to 1)."
    )
    progress: Annotated[bool, Flag("--progress/--no-progress")] = Field(
        True, description="Show a progress bar."
    )
    workers: Annotated[int, Flag(min=0)] = Field(
        0, description="Processes to render with; 0 = one per CPU core (at most 8)."
    )
    overwrite: Annotated[bool, Flag()] = Field(
        False,
        description="Replace a dataset this command wrote earlier with other parameters (a "
        "folder it did not write is never touched).",
    )


def clevr_synth(values: dict[str, Any]) -> None:
    """Render CLEVR-like scenes into CLEVR's layout: images/<split>/*.png, scenes/*.json.

    The output depends only on --n, --size, --seed and --splits (not on --workers). --out must
    be new, empty, or a folder this command wrote (rerunning the same command is safe).
    """
    from strop.atomic import OutputPathError
    from strop.data.renderer import OutputFolderError, generate_dataset

    o = SynthOptions.model_validate(values)
    n, out, workers = o.n, o.out, o.workers
    fractions = _parse_splits(o.splits)
    if workers == 0:
        workers = min(os.cpu_count() or 1, 8, max(1, n // 100))
    start = time.perf_counter()
    # --out that holds someone else's files is a wrong command line; a full disk a failure
    with exit_on(usage=(OutputFolderError,), failed=(OSError, OutputPathError)):
        settings = o.model_dump(include={"size", "seed", "progress", "overwrite"})
        counts = generate_dataset(out, n, splits=fractions, workers=workers, **settings)
    elapsed = time.perf_counter() - start
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    typer.echo(
        f"wrote {n} scenes ({summary}) to {out} in {elapsed:.1f} s ({n / elapsed:.0f} img/s)"
    )


commands.command("clevr-synth")(command(clevr_synth, SynthOptions))


class InspectOptions(BaseModel):
    """`strop data inspect`'s options."""

    path: Annotated[str, Arg()] = Field(
        description="A CLEVR folder, an image folder, or a datasets copy."
    )
    split: Annotated[str, Flag()] = Field("train", description="Split to open.")
    image_size: Annotated[int, Flag(min=8)] = Field(128, description="Resize images to this side.")
    check_all: Annotated[bool, Flag()] = Field(
        False, description="Decode every image (slow), not only the first."
    )


def inspect(values: dict[str, Any]) -> None:
    """Open a dataset as training would and print what it holds; fail with one clear line."""
    from strop.data.datasets import DataError, build_dataset

    o = InspectOptions.model_validate(values)
    split, check_all = o.split, o.check_all
    with exit_on(failed=(DataError,)):
        dataset = build_dataset(o.path, split, o.image_size)
        first = dataset[0]
        for i in range(1, len(dataset) if check_all else 0):
            dataset[i]
    known = [n for n in getattr(dataset, "n_objects_list", []) if n >= 0]
    typer.echo(f"{type(dataset).__name__}: {len(dataset)} images, split {split}")
    typer.echo(f"first item: image {tuple(first['image'].shape)}, id {first['image_id']}")
    if check_all:
        typer.echo(f"decoded all {len(dataset)} images")
    if known:
        typer.echo(
            f"objects per scene: {min(known)}-{max(known)}, mean {sum(known) / len(known):.2f}"
        )


commands.command("inspect")(command(inspect, InspectOptions))
