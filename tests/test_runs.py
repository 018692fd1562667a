"""Run-folder I/O: programs.parquet round-trip (also through `datasets`), bad codes, discovery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from strop.runs import (
    Programs,
    RunFolder,
    RunFolderError,
    discover_runs,
    find_run,
    read_programs,
    write_programs,
)


def _programs() -> Programs:
    return Programs(
        codes=[np.array([3, 1, 4, 1, 5]), np.array([9]), np.array([2, 6, 5, 3])],
        image_id=["CLEVR_val_000000", "CLEVR_val_000001", "CLEVR_val_000002"],
        split=["val", "val", "val"],
        n_objects=np.array([5, -1, 7]),
        scene=['{"objects": []}', None, ""],
        codebook_size=10,
        meta={"teacher": "random-vit"},
    )


def test_programs_round_trip(tmp_path: Path) -> None:
    path = write_programs(tmp_path / "run" / "programs.parquet", _programs())
    got = read_programs(path)
    want = _programs()
    assert [c.tolist() for c in got.codes] == [c.tolist() for c in want.codes]
    assert got.image_id == want.image_id and got.split == want.split
    assert got.n_objects.tolist() == [5, -1, 7]
    assert got.scene == want.scene
    assert got.codebook_size == 10 and got.meta["teacher"] == "random-vit"
    assert got.lengths.tolist() == [5, 1, 4]
    assert got.padded().tolist()[1] == [9, -1, -1, -1, -1]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_programs_parquet_reads_with_datasets(tmp_path: Path) -> None:
    import datasets

    path = write_programs(tmp_path / "programs.parquet", _programs())
    ds = datasets.load_dataset(
        "parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds.num_rows == 3
    assert {"image_id", "split", "codes", "length", "n_objects", "scene"} <= set(ds.column_names)
    assert ds[0]["codes"] == [3, 1, 4, 1, 5]
    assert ds["length"] == [5, 1, 4]
    assert ds["n_objects"] == [5, None, 7]  # unknown counts are nulls in the file


def test_negative_code_is_refused_when_writing(tmp_path: Path) -> None:
    programs = _programs()
    programs.codes[2] = np.array([2, -3, 5])
    path = tmp_path / "programs.parquet"
    with pytest.raises(RunFolderError) as err:
        write_programs(path, programs)
    msg = str(err.value)
    assert "\n" not in msg
    assert "row 2" in msg and "CLEVR_val_000002" in msg and "field codes" in msg and "-3" in msg
    assert not path.exists() and not list(tmp_path.iterdir())


def _raw_parquet(path: Path, codes: list[list[int]], k: int | None) -> None:
    """A file written by someone else (no validation on the way in)."""
    table = pa.table(
        {
            "image_id": [f"img{i}" for i in range(len(codes))],
            "codes": pa.array(codes, pa.list_(pa.int32())),
        }
    )
    if k is not None:
        table = table.replace_schema_metadata({b"strop": f'{{"codebook_size": {k}}}'.encode()})
    pq.write_table(table, path)


def test_out_of_range_and_negative_codes_are_refused_when_reading(tmp_path: Path) -> None:
    path = tmp_path / "programs.parquet"
    _raw_parquet(path, [[0, 1], [7, 8, 12], [1]], k=10)
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and "field codes" in msg and "12" in msg
    assert "outside [0, 10)" in msg
    # The caller's K overrides the stored one.
    assert read_programs(path, codebook_size=16).codebook_size == 16

    _raw_parquet(path, [[0, 1], [2, -1]], k=None)
    with pytest.raises(RunFolderError, match=r"row 1 .*field codes: negative code -1"):
        read_programs(path)


def test_length_column_must_match_codes(tmp_path: Path) -> None:
    path = write_programs(tmp_path / "programs.parquet", _programs())
    table = pq.read_table(path)
    table = table.set_column(
        table.column_names.index("length"), "length", pa.array([5, 2, 4], pa.int32())
    )
    pq.write_table(table, path)
    with pytest.raises(RunFolderError, match="row 1 field length: 2 but codes has 1 entries"):
        read_programs(path)


def test_k_comes_from_the_run_files_never_from_the_folder_name(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "k128")
    write_programs(run.programs_path, Programs(codes=[[1, 2]]))  # no K recorded anywhere
    assert run.codebook_size is None
    run.write_config({"model": {"k": 64}})
    assert run.codebook_size == 64
    with pytest.raises(RunFolderError, match="no run with K=128"):
        find_run(tmp_path, 128)


def test_discovery_in_natural_order_and_find_run(tmp_path: Path) -> None:
    for k in (128, 32, 64):
        RunFolder(tmp_path / f"k{k}").write_config({"model": {"k": k}})
    (tmp_path / "figures").mkdir()  # not a run
    runs = discover_runs(tmp_path)
    assert [r.name for r in runs] == ["k32", "k64", "k128"]
    assert find_run(tmp_path, 64).name == "k64"
    assert discover_runs(tmp_path / "k32")[0].name == "k32"
    with pytest.raises(RunFolderError, match="no run with K=256"):
        find_run(tmp_path, 256)


def test_metrics_jsonl_skips_a_torn_last_line(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.append_metrics({"step": 1, "loss": 0.5})
    run.append_metrics({"step": 2, "loss": 0.4})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 3, "lo')  # killed mid-write
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_atomic_writes_are_readable_by_others(tmp_path):
    import stat

    from strop.runs import write_json

    write_json(tmp_path / "eval.json", {"cos": 1.0})
    write_programs(tmp_path / "programs.parquet", Programs(codes=[[1, 2]], codebook_size=4))
    for name in ("eval.json", "programs.parquet"):
        mode = (tmp_path / name).stat().st_mode
        assert mode & stat.S_IRGRP and mode & stat.S_IROTH, f"{name} is not world-readable"
