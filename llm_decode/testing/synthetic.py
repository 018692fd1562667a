"""Synthetic run folders for tests and the benchmark: random CLEVR scenes and their "programs".

The codes are a noisy function of the scene (one code per object from its attributes, one
from its position cell, plus random filler), so a method that reads code identity (knn, a
real LLM) has something to find, and the naive baseline does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strop.runs import Programs, write_programs
from strop.scenes import COLORS, MATERIALS, SHAPES, SIZES, Scene, SceneObject


def random_scene(rng: np.random.Generator, index: int, split: str) -> Scene:
    n = int(rng.integers(3, 11))
    objects = [
        SceneObject.model_validate(
            {
                "color": COLORS[rng.integers(len(COLORS))],
                "shape": SHAPES[rng.integers(len(SHAPES))],
                "material": MATERIALS[rng.integers(len(MATERIALS))],
                "size": SIZES[rng.integers(len(SIZES))],
                "coords_3d": (float(rng.uniform(-3, 3)), float(rng.uniform(-3, 3)), 0.35),
            }
        )
        for _ in range(n)
    ]
    return Scene(
        image_index=index,
        image_filename=f"CLEVR_{split}_{index:06d}.png",
        split=split,
        objects=objects,
    )


def scene_codes(scene: Scene, k: int, rng: np.random.Generator, noise: int = 2) -> np.ndarray:
    codes = []
    for obj in scene.objects:
        attr = (
            COLORS.index(obj.color) * 24
            + SHAPES.index(obj.shape) * 8
            + MATERIALS.index(obj.material) * 2
            + SIZES.index(obj.size)
        )
        cell = int((obj.coords_3d[0] + 3) // 2) * 3 + int((obj.coords_3d[1] + 3) // 2)
        codes += [attr % k, (192 + cell) % k]
    codes += rng.integers(0, k, size=noise).tolist()
    return np.asarray(codes, dtype=np.int64)


def make_run(
    run_dir: str | Path,
    *,
    k: int = 64,
    n_train: int = 60,
    n_val: int = 20,
    seed: int = 0,
    with_scenes: bool = True,
) -> Path:
    """Write `run_dir/programs.parquet` with train and val rows; returns its path."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * n_train + ["val"] * n_val
    scenes = [random_scene(rng, i, s) for i, s in enumerate(splits)]
    programs = Programs(
        codes=[scene_codes(s, k, rng) for s in scenes],
        image_id=[Path(s.image_filename).stem for s in scenes],
        split=splits,
        n_objects=np.array([s.n_objects for s in scenes]),
        scene=[s.to_json() if with_scenes else None for s in scenes],
        codebook_size=k,
    )
    return write_programs(Path(run_dir) / "programs.parquet", programs)


def true_answers(run: Path) -> dict[str, dict]:
    """The right answer for every program of `run`: space-joined codes -> abbreviated scene
    (what a perfect LLM would return; the fake server answers with it)."""
    import json

    from llm_decode.schema import DecodedScene
    from strop.runs import read_programs

    programs = read_programs(Path(run) / "programs.parquet" if Path(run).is_dir() else run)
    return {
        " ".join(map(str, c.tolist())): json.loads(
            DecodedScene.from_scene_json(s).model_dump_json()
        )
        for c, s in zip(programs.codes, programs.scene, strict=True)
        if s is not None  # make_run writes a scene for every program
    }
