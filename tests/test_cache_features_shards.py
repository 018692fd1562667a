"""`strop cache-features` at scale (issue 28 item 3): the sharded feature cache written by the
pass `strop export` runs (resume after kill -9, torchrun ranks), read by the trainer."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line, tiny_run_config
from helpers import assert_not_rewritten, file_stamps, kill_9_in_the_next_shard
from typer.testing import CliRunner

from strop.cli import app
from strop.data.datasets import build_dataset
from strop.data.renderer import generate_dataset
from strop.evaluation.feature_shards import cache_features
from strop.model.feature_cache import FeatureCacheDataset, FeatureCacheError, write_features
from strop.model.teachers import PixelTeacher, build_teacher
from strop.runs import RunFolder

N = 10  # images per split: train and val
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
#: the CLI line every subprocess here runs (random-vit: a teacher with weights and matmuls)
CLI = ["--teacher", "random-vit", "--patch-size", "8", "--image-size", "32"]
CLI += ["--batch-size", "3", "--shard-rows", "4", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "clevr-synth"
    generate_dataset(root, n=2 * N, size=32, seed=0, splits=(0.5, 0.5, 0.0), progress=False)
    return root


def sharded(data, out, teacher=None, **kw):
    kw = {"batch_size": 3, "shard_rows": 4, "progress": False, "device": "cpu", **kw}
    return cache_features(data, ["train", "val"], teacher or PixelTeacher(8), out, 32, **kw)


def cli(data, out, *extra: str, torchrun: int = 0) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += ["--nproc_per_node", str(torchrun)] if torchrun else []
    command = [*(launch if torchrun else [sys.executable]), "-m", "strop.cli", "cache-features"]
    command += ["--data", str(data), "--out", str(out), "--device", "cpu", *CLI, *extra]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_the_sharded_cache_holds_the_teacher_features_of_a_single_file_cache(data, tmp_path):
    index_path = sharded(data, tmp_path / "cache")
    folder = tmp_path / "cache"
    index = json.loads(index_path.read_text())
    assert index["format"] == "strop-feature-cache" and index["version"] == 2
    assert index["teacher"] == "pixels" and index["teacher_identity"]["patch_size"] == 8
    assert index["teacher_identity"]["weights_sha256"] == hashlib.sha256().hexdigest()
    assert {k: v["n"] for k, v in index["splits"].items()} == {"train": N, "val": N}
    shards = index["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == [f"train-{i:05d}.npy" for i in range(3)]
    assert [s["rows"] for s in shards] == [4, 4, 2]
    for s in shards:
        assert s["sha256"] == hashlib.sha256((folder / s["file"]).read_bytes()).hexdigest()
        assert np.load(folder / s["file"]).shape == (s["rows"], 16, 192)

    # the same numbers and rows as today's single-file cache, which stays readable
    old = tmp_path / "old"
    for split in ("train", "val"):
        write_features(
            build_dataset(data, split, 32), PixelTeacher(8), old, split, 32, progress=False
        )
    for split in ("train", "val"):
        new, ref = FeatureCacheDataset(folder, split), FeatureCacheDataset(old, split)
        assert len(new) == len(ref) == N and new.shape == ref.shape
        for i in range(N):
            a, b = new[i], ref[i]
            assert torch.equal(a.pop("feats"), b.pop("feats")) and a == b
    FeatureCacheDataset(folder, "train").check(tiny_run_config(data, "model.image_size=32").model)


def test_torchrun_two_gloo_processes_write_the_cache_of_one_process(data, tmp_path):
    cli(data, tmp_path / "two", torchrun=2)
    cli(data, tmp_path / "one")
    two, one = folder_bytes(tmp_path / "two"), folder_bytes(tmp_path / "one")
    assert len([n for n in two if n.endswith(".npy")]) == 6
    assert two == one  # every shard, the plan and index.json, bit for bit
    assert json.loads(two["index.json"])["teacher_identity"]["weights_sha256"] != (
        hashlib.sha256().hexdigest()
    )


#: the real pass in a child process, each batch slowed so a kill lands mid-run
SLOW_CACHE = """
import sys, time
from strop.evaluation.feature_shards import cache_features
from strop.model.teachers import PixelTeacher
class Slow(PixelTeacher):
    def forward(self, images):
        time.sleep(0.25)
        return super().forward(images)
cache_features(sys.argv[1], ["train", "val"], Slow(8), sys.argv[2], 32, batch_size=3,
               shard_rows=4, progress=False, device="cpu")
"""


def test_kill_9_mid_run_resumes_at_the_first_unfinished_shard(data, tmp_path):
    folder = tmp_path / "cache"
    kill_9_in_the_next_shard(SLOW_CACHE, [str(data), str(folder)], folder / "train-00001.npy", ENV)
    finished = file_stamps(folder, "*.npy")
    assert {"train-00000.npy", "train-00001.npy"} <= set(finished) and len(finished) < 6
    assert not (folder / "index.json").exists()
    with pytest.raises(FeatureCacheError, match="did not finish; rerun the same command"):
        FeatureCacheDataset(folder, "train")

    sharded(data, folder)  # the same call again
    assert_not_rewritten(folder, finished)  # a finished shard is never rewritten
    assert not list(folder.glob(".*.partial"))
    sharded(data, tmp_path / "whole")
    assert folder_bytes(folder) == folder_bytes(tmp_path / "whole")


def test_training_reads_the_sharded_cache(data, tmp_path):
    from strop.training.trainer import train

    cfg = tiny_run_config(data, "model.image_size=32", "model.l_max=8", "train.steps=3")
    teacher = build_teacher("pixels", None, 32, cfg.model.patch_size)
    sharded(data, tmp_path / "cache", teacher=teacher)
    sets = ["model.image_size=32", "model.l_max=8", "train.steps=3", "train.num_workers=0"]
    sets += ["train.val_every=3", "train.val_batches=1", "train.pixel_decoder=false"]
    run = train(
        tiny_run_config(data, *sets, f"data.feature_cache={tmp_path / 'cache'}"),
        tmp_path / "run",
        progress=False,
    )
    rows = RunFolder(run).read_metrics()
    assert any("val_cos" in r for r in rows) and any("loss" in r for r in rows)


# --------------------------------------------------------------------------- bad input


def strop(*args) -> object:
    return CliRunner().invoke(app, ["cache-features", *map(str, args)])


def test_bad_shard_rows_and_a_folder_of_another_teacher_are_one_line_errors(data, tmp_path):
    base = ["--data", data, "--out", tmp_path / "c", "--image-size", "32", "--workers", "0"]
    base += ["--no-progress", "--device", "cpu", "--batch-size", "3"]
    result = strop(*base, "--shard-rows", "0")
    assert result.exit_code == 2 and "--shard-rows" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(FeatureCacheError, match=r"^cache-features: --shard-rows -1: expected"):
        sharded(data, tmp_path / "lib", shard_rows=-1)

    pixels = [*base, "--teacher", "pixels", "--patch-size", "8", "--shard-rows", "4"]
    assert strop(*pixels).exit_code == 0
    other = [*base, "--teacher", "random-vit", "--patch-size", "8", "--shard-rows", "4"]
    line = one_error_line(strop(*other), 1)
    assert "plan.json: a cache-features run with other settings (teacher;" in line
    assert "--replace" in line
    line = one_error_line(strop(*pixels[:-1], "5"), 1)
    assert "(shard_rows; shard_rows 4 here, 5 now)" in line
    assert len(FeatureCacheDataset(tmp_path / "c", "train").shards) == 3  # kept whole
    assert strop(*pixels[:-1], "5", "--replace").exit_code == 0
    assert len(FeatureCacheDataset(tmp_path / "c", "train").shards) == 2
    assert sorted(p.name for p in (tmp_path / "c").glob("train-*.npy")) == [
        "train-00000.npy",
        "train-00001.npy",
    ]


def test_a_single_file_cache_folder_is_kept_unless_replace(data, tmp_path):
    old = tmp_path / "old"
    write_features(build_dataset(data, "val", 32), PixelTeacher(8), old, "val", 32, progress=False)
    with pytest.raises(FeatureCacheError, match=r"index.json: a single-file feature cache \(val\)"):
        sharded(data, old)
    assert FeatureCacheDataset(old, "val").shape[0] == N
    sharded(data, old, replace=True)
    assert sorted(p.name for p in old.iterdir() if not p.name.endswith((".npy", ".jsonl"))) == [
        "index.json",
        "plan.json",
    ]
    assert FeatureCacheDataset(old, "val").sharded
    with pytest.raises(FeatureCacheError, match="holds a sharded feature cache"):
        write_features(build_dataset(data, "val", 32), PixelTeacher(8), old, "val", 32)


def test_a_truncated_shard_is_refused_at_open(data, tmp_path):
    sharded(data, tmp_path / "c")
    shard = tmp_path / "c" / "val-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(FeatureCacheError, match=r"val-00001.npy: expected float16 \(4, 16, 192\)"):
        FeatureCacheDataset(tmp_path / "c", "val")
