"""`strop export` at scale: the sharded programs dataset (manifest, resume after kill -9,
torchrun ranks) and every reader taking it (issue 28 items 1 and 3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SLOW_EXPORT,
    SPREAD_N,
    assert_not_rewritten,
    file_stamps,
    kill_9_in_the_next_shard,
    rows,
)

from strop.evaluation.export import ExportWouldDropPrograms, export_programs
from strop.evaluation.programs_dataset import ProgramsDatasetError, dataset_dir_for
from strop.runs import RunFolder, RunFolderError, read_programs

REPO = Path(__file__).resolve().parents[1]
N = SPREAD_N


def sharded(spread_run, out, **kw):
    return export_programs(
        spread_run, split="train,val", batch_size=3, progress=False, out=out, shard_rows=4, **kw
    )


def test_large_export_writes_shards_and_manifest_equal_to_one_file(
    spread_run, spread_single, tmp_path
):
    manifest_path = sharded(spread_run, tmp_path / "programs.parquet")
    folder = tmp_path / "programs"
    assert (
        manifest_path == folder / "manifest.json" and not (tmp_path / "programs.parquet").exists()
    )
    manifest = json.loads(manifest_path.read_text())
    assert manifest["splits"] == {"train": N, "val": N} and manifest["rows"] == 2 * N
    assert manifest["codebook_size"] == 16 and manifest["length_mode"] == "head"
    assert (
        manifest["weights"] == spread_single.meta["weights"]
        and manifest["weights"]["checkpoint_sha256"]
    )
    names = [s["file"] for s in manifest["shards"]]
    assert names == [f"{s}-{i:05d}.parquet" for s in ("train", "val") for i in range(3)]
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 2] * 2
    for s in manifest["shards"]:
        assert s["sha256"] == hashlib.sha256((folder / s["file"]).read_bytes()).hexdigest()
    # each shard is a programs file of its own, row groups bounded by the writer
    assert read_programs(folder / "val-00002.parquet").image_id == spread_single.image_id[-2:]

    programs = read_programs(folder)  # the folder and its manifest read alike
    assert rows(programs) == rows(spread_single) == rows(read_programs(manifest_path))
    assert (
        programs.codebook_size == 16 and programs.meta["weights"] == spread_single.meta["weights"]
    )


def test_huggingface_datasets_reads_the_shards(spread_run, spread_single, tmp_path):
    datasets = pytest.importorskip("datasets")
    sharded(spread_run, tmp_path / "p.parquet")
    files = {s: str(tmp_path / "p" / f"{s}-*.parquet") for s in ("train", "val")}
    table = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert table["train"].num_rows == N and table["val"].num_rows == N
    assert table["val"]["image_id"] == spread_single.image_id[N:]
    assert table["train"][3]["codes"] == spread_single.codes[3].tolist()


def test_an_export_that_fits_one_shard_keeps_the_single_file(spread_run, tmp_path):
    out = export_programs(
        spread_run, split="val", batch_size=4, progress=False, out=tmp_path / "p.parquet"
    )
    assert out == tmp_path / "p.parquet" and out.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet"]


def test_run_folder_readers_take_the_dataset_form(spread_run, spread_single, tmp_path):
    """RunFolder.read_programs is what eval, analyze, report and llm_decode call; grammar's
    corpus loader goes through it too."""
    import shutil

    from grammar.corpus import discover

    run = RunFolder(tmp_path / "k16")
    shutil.copytree(spread_run, run.path)
    path = sharded(run.path, None)
    assert path == run.path / "programs" / "manifest.json" and run.programs_path == path
    assert rows(run.read_programs()) == rows(spread_single) and run.codebook_size == 16
    [(source, corpus)] = [(s, s.load()) for s in discover(run.path)[0]]
    assert corpus.n_programs == 2 * N and source.name == "k16"

    # back to one file: the dataset it replaces goes, so no reader sees two
    export_programs(run.path, split="train,val", batch_size=3, progress=False)
    assert run.programs_file.is_file() and not run.programs_dataset_dir.exists()
    assert rows(run.read_programs()) == rows(spread_single)


def test_shrinking_the_output_is_refused_in_either_form(spread_run, tmp_path):
    sharded(spread_run, tmp_path / "p.parquet")
    with pytest.raises(ExportWouldDropPrograms, match=r"train 10"):
        export_programs(spread_run, split="val", progress=False, out=tmp_path / "p.parquet")
    assert (tmp_path / "p" / "manifest.json").is_file()


def test_readers_refuse_an_unfinished_or_altered_dataset(spread_run, tmp_path):
    sharded(spread_run, tmp_path / "p.parquet")
    folder = tmp_path / "p"
    shard = folder / "train-00001.parquet"
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ProgramsDatasetError, match=r"train-00001.parquet: sha256 differs"):
        read_programs(folder)
    shard.write_bytes(good)
    (folder / "manifest.json").unlink()
    with pytest.raises(RunFolderError, match="did not finish; rerun the same `strop export`"):
        read_programs(folder)


def test_a_resume_with_other_settings_is_refused_and_replace_starts_over(spread_run, tmp_path):
    sharded(spread_run, tmp_path / "p.parquet")
    (tmp_path / "p" / "manifest.json").unlink()
    refusal = r"other settings \(length_mode; length_mode .head. here, .fixed. now\).*--replace"
    with pytest.raises(ProgramsDatasetError, match=refusal):
        sharded(spread_run, tmp_path / "p.parquet", length_mode="fixed")
    sharded(spread_run, tmp_path / "p.parquet", length_mode="fixed", replace=True)
    programs = read_programs(tmp_path / "p")
    assert programs.meta["length_mode"] == "fixed" and set(programs.lengths.tolist()) == {8}


# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_export_resumes_at_the_first_unfinished_shard(
    spread_run, spread_single, tmp_path
):
    out = tmp_path / "p.parquet"
    folder = dataset_dir_for(out)
    kill_9_in_the_next_shard(
        SLOW_EXPORT, [str(spread_run), str(out)], folder / "train-00001.parquet"
    )
    finished = file_stamps(folder, "*.parquet")
    assert {"train-00000.parquet", "train-00001.parquet"} <= set(finished)
    assert len(finished) < 6 and not (folder / "manifest.json").exists()
    with pytest.raises(RunFolderError, match="did not finish"):
        read_programs(folder)

    sharded(spread_run, out)  # the same command again
    assert_not_rewritten(folder, finished)  # a finished shard is never rewritten
    assert not list(folder.glob(".*.partial"))
    assert rows(read_programs(folder)) == rows(spread_single)
    # byte for byte what an uninterrupted export writes
    whole = sharded(spread_run, tmp_path / "whole.parquet")
    assert (
        json.loads(whole.read_text())["shards"]
        == json.loads((folder / "manifest.json").read_text())["shards"]
    )


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_gloo_processes_write_the_rows_of_a_one_process_export(
    spread_run, spread_single, tmp_path
):
    out = tmp_path / "p.parquet"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "strop.cli",
        "export",
        str(spread_run),
        "--split",
        "train,val",
        "--batch-size",
        "3",
        "--shard-rows",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 6
    assert rows(read_programs(tmp_path / "p")) == rows(spread_single)
    # and byte-identical shards to a one-process export
    alone = json.loads(sharded(spread_run, tmp_path / "alone.parquet").read_text())
    assert alone["shards"] == manifest["shards"]
    assert np.array_equal(
        read_programs(tmp_path / "p").n_objects, read_programs(tmp_path / "alone").n_objects
    )
