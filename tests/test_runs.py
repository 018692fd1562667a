"""Run-folder I/O: programs.parquet round-trip (also through `datasets`), bad codes, discovery,
and damaged run files (config.json, codes, schema metadata) named in one line by every reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_error_line
from helpers import strop, strop_grammar

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


# --------------------------------------------------------------------------- damaged run files


def _rewrite_codes(k64_run: Path, codes: pa.Array, drop_length: bool = True) -> Path:
    path = k64_run / "programs.parquet"
    table = pq.read_table(path)
    if drop_length:
        table = table.drop_columns(["length"])
    table = table.set_column(table.column_names.index("codes"), "codes", codes)
    pq.write_table(table, path)
    return path


def test_a_config_json_that_is_a_list(k64_run: Path) -> None:
    (k64_run / "config.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match=r"config\.json: expected a JSON object, got a list"):
        RunFolder(k64_run).read_config()
    for command in (["export", k64_run], ["eval", k64_run], ["analyze", k64_run]):
        line = one_error_line(strop(*command), 1)
        assert str(k64_run / "config.json") in line and "expected a JSON object" in line, command
    line = one_error_line(strop_grammar("mine", k64_run.parent, "--quiet"), 1)
    assert "config.json" in line and "expected a JSON object" in line


def test_a_codes_column_of_ints(k64_run: Path) -> None:
    path = _rewrite_codes(k64_run, pa.array(np.arange(40), pa.int64()))
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    assert str(err.value) == f"{path}: column codes is int64, expected lists of integers"
    assert "column codes is int64" in one_error_line(strop_grammar("mine", k64_run, "--quiet"), 1)


def test_float_codes_are_refused_not_truncated(k64_run: Path) -> None:
    rows = pq.read_table(k64_run / "programs.parquet").column("codes").to_pylist()
    path = _rewrite_codes(
        k64_run, pa.array([[c + 0.7 for c in r] for r in rows], pa.list_(pa.float64()))
    )
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    assert str(err.value).startswith(f"{path}: column codes is list<")
    assert str(err.value).endswith(" double>, expected lists of integers")
    assert "expected lists of integers" in one_error_line(
        strop_grammar("mine", k64_run, "--quiet"), 1
    )


def test_a_null_inside_codes_is_named_as_such(k64_run: Path) -> None:
    rows = pq.read_table(k64_run / "programs.parquet").column("codes").to_pylist()
    rows[3] = rows[3][:2] + [None] + rows[3][3:]
    path = _rewrite_codes(k64_run, pa.array(rows, pa.list_(pa.int32())), drop_length=False)
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    assert str(err.value).startswith(f"{path}: row 3 (")
    assert str(err.value).endswith("field codes: null at position 2")


@pytest.mark.parametrize("meta", [b"{not json", b"[1, 2]", b'{"codebook_size": "many"}'])
def test_corrupt_schema_metadata(k64_run: Path, meta: bytes) -> None:
    path = k64_run / "programs.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"strop": meta}), path)
    with pytest.raises(RunFolderError, match="schema metadata 'strop'"):
        read_programs(path)
    assert "schema metadata 'strop'" in one_error_line(strop_grammar("mine", k64_run, "--quiet"), 1)
    report = strop("report", k64_run.parent)
    assert report.exit_code == 0 and "Traceback" not in report.output, report.output
    assert "schema metadata 'strop'" in (k64_run.parent / "report.md").read_text()


def test_report_names_a_bad_eval_json_and_a_bad_metrics_row(k64_run: Path) -> None:
    RunFolder(k64_run).write_eval({"cos": 0.9, "length_vs_objects": [1, 2]})
    (k64_run / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 1.0})
        + "\n"
        + json.dumps({"step": "20", "loss": 0.5})
        + "\n"
    )
    result = strop("report", k64_run.parent)
    assert result.exit_code == 0 and result.exception is None, result.output
    text = (k64_run.parent / "report.md").read_text()
    assert "eval.json: field length_vs_objects: expected an object, got a list" in text
    assert "metrics.jsonl: line 2 field step: expected an integer, got '20'" in text
