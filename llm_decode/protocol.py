"""The evaluation protocol: which images are shots, which are tested, all from one seed.

Design decisions
- An image listed twice is refused, naming it: its copies could be a shot and a test image.
- `seed` draws the images, `sampling_seed` (default: `seed`) seeds sampling, so a sampled run
  can be repeated on a fixed test set.
- Only rows with a scene can serve (a shot needs its answer, a test image its truth).
- When the programs file has a `train` split and a `val` or `test` split, shots come from
  train and test images from val/test (held out from the tokenizer's training as well). A
  file with a single split (`strop export` writes `val` by default) is split by the seed into
  disjoint test and shot sets.
- One shot set per run, shared by every query (the paper's "50 random in-context examples"),
  which is also what lets a server cache the prompt prefix. Shots keep the order the seeded
  draw gives them; test images are processed in their drawn order.
- The permutation control (`--permute-codes`) remaps the *query* codes by a seeded random
  permutation of the codebook while the shots stay as they are. Every statistic of a single
  program (length, repetition, code frequencies up to relabelling) survives, but the link
  between a query code and the same code in the shots is cut: if scores fall to the naive
  baseline, the model was reading code identity. (Permuting shots and query alike would
  change nothing for an in-context learner.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_decode.schema import DecodedScene
from strop.cli_options import Flag
from strop.errors import validation_line
from strop.runs import Programs, RunFolderError

SHOT_SPLITS = ("train",)
TEST_SPLITS = ("val", "test")


class ProtocolConfig(BaseModel):
    """How many shots and test images, the seed, sampling and the parse retry."""

    model_config = ConfigDict(extra="forbid")

    shots: Annotated[int, Flag()] = Field(50, ge=1, description="In-context examples per prompt.")
    test: Annotated[int, Flag()] = Field(
        15, ge=1, description="Held-out images decoded and scored."
    )
    seed: Annotated[int, Flag()] = Field(
        0, ge=0, description="Seeds which images are shots and tests."
    )
    sampling_seed: Annotated[int | None, Flag()] = Field(
        None,
        ge=0,
        description="Seeds sampling (the request's seed, the baselines' draws); default: --seed. "
        "Vary it alone to repeat a sampled run on the same test set.",
    )
    temperature: Annotated[float, Flag()] = Field(
        0.0, ge=0.0, le=2.0, description="Sampling temperature (the paper's: 0, greedy)."
    )
    parse_retries: Annotated[int, Flag()] = Field(
        1, ge=0, description="Extra requests after a parse failure."
    )
    permute_codes: Annotated[bool, Flag()] = Field(
        False, description="Permutation control on the query codes."
    )

    @property
    def sampling_seed_or_seed(self) -> int:
        return self.seed if self.sampling_seed is None else self.sampling_seed


@dataclass(frozen=True)
class Selection:
    test: list[int]  # row indices into the programs file
    shots: list[int]
    source: str  # how the sets were drawn, recorded in the summary


def scene_rows(programs: Programs) -> list[int]:
    return [i for i, s in enumerate(programs.scene) if s]


def duplicated_ids(image_ids: Sequence[str]) -> list[str]:
    """Image ids listed more than once, in first-seen order."""
    counts = Counter(image_ids)
    return [i for i in dict.fromkeys(image_ids) if counts[i] > 1]


def check_unique_images(image_ids: Sequence[str], source: str) -> None:
    """Refuse a table that lists an image twice: one copy could be a shot and the other a
    test image, and the model would be scored on an answer it was shown."""
    dup = duplicated_ids(image_ids)
    if dup:
        shown = ", ".join(dup[:5]) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
        raise RunFolderError(
            f"{source}: {len(dup)} image ids are listed more than once ({shown}); a "
            "duplicated image can be both a shot and a test image. Export each split once "
            "(strop export --split train,val)"
        )


def select(programs: Programs, config: ProtocolConfig, source: str = "programs") -> Selection:
    """Draw the test and shot rows deterministically from `config.seed`."""
    rows = scene_rows(programs)
    if not rows:
        raise RunFolderError(f"{source}: no row has a scene; decoding needs CLEVR scenes")
    check_unique_images([programs.image_id[i] for i in rows], source)
    rng = np.random.default_rng(config.seed)
    shot_pool = [i for i in rows if programs.split[i] in SHOT_SPLITS]
    test_pool = [i for i in rows if programs.split[i] in TEST_SPLITS]
    if shot_pool and test_pool:
        how = "shots from train, test from val/test"
    else:
        shuffled = [rows[i] for i in rng.permutation(len(rows))]
        test_pool, shot_pool = shuffled[: config.test], shuffled[config.test :]
        how = "one split, divided by the seed"
    for name, pool, want in (("test", test_pool, config.test), ("shots", shot_pool, config.shots)):
        if len(pool) < want:
            raise RunFolderError(
                f"{source}: --{name} {want} needs {want} rows with scenes ({how}); "
                f"found {len(pool)} of {len(rows)}"
            )
    test = [int(i) for i in rng.choice(test_pool, size=config.test, replace=False)]
    shots = [int(i) for i in rng.choice(shot_pool, size=config.shots, replace=False)]
    return Selection(test=test, shots=shots, source=how)


def load_scene(programs: Programs, row: int, source: str) -> DecodedScene:
    """The abbreviated scene of one row; a bad scene is a one-line error naming the row."""
    where = f"{source}: row {row} ({programs.image_id[row]})"
    try:
        return DecodedScene.from_scene_json(programs.scene[row] or "")
    except ValidationError as exc:
        raise RunFolderError(validation_line(exc, where, prefix="scene.")) from None
    except ValueError as exc:
        raise RunFolderError(f"{where} field scene.<root>: {exc}") from None


def code_permutation(codebook_size: int, seed: int) -> np.ndarray:
    """A seeded permutation of [0, K) for the control (independent of the selection draw)."""
    return np.random.default_rng([seed, 0x5EED]).permutation(codebook_size)
