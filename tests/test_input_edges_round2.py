"""Hostile inputs, second pass (issue 18): each one clear line and the right exit code.

Files are real (written, then damaged), commands run through typer's CliRunner or as real
subprocesses. Exit 2: the command line is wrong; exit 1: the data or the work failed.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_error_line, script_path
from typer.testing import CliRunner

from grammar.cli import app as grammar_app
from llm_decode.testing.synthetic import make_run
from strop.cli import app as strop_app
from strop.runs import RunFolder, RunFolderError, read_programs
from strop.scenes import SceneFileError, load_scenes


def usage_error(result) -> str:
    """Exit 2 from typer's own parameter checks (a boxed message) or from ours (`error:`)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def strop(*args: str):
    return CliRunner().invoke(strop_app, [str(a) for a in args])


def grammar(*args: str):
    return CliRunner().invoke(grammar_app, [str(a) for a in args])


# --------------------------------------------------------------------------- scene files


def _edit_scenes(root: Path, split: str, edit) -> Path:
    path = root / "scenes" / f"CLEVR_{split}_scenes.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_scenes_nested_100000_deep_is_one_line(synth_clevr: Path) -> None:
    path = synth_clevr / "scenes" / "CLEVR_train_scenes.json"
    text = path.read_text()
    path.write_text(text[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SceneFileError, match="nested too deeply"):
        load_scenes(path)
    line = one_error_line(strop("data", "inspect", synth_clevr, "--image-size", 16), 1)
    assert str(path) in line and "nested too deeply" in line


@pytest.mark.parametrize("frame", [[0, 0], [-48, -48], [48], "48x48", [48, float("inf")]])
def test_a_pixel_frame_that_is_no_frame_is_refused(synth_clevr: Path, frame) -> None:
    def edit(data):
        data["info"]["pixel_frame"] = frame

    path = _edit_scenes(synth_clevr, "train", edit)
    with pytest.raises(SceneFileError, match=r"info\.pixel_frame"):
        load_scenes(path)
    line = one_error_line(strop("data", "inspect", synth_clevr, "--image-size", 16), 1)
    assert str(path) in line and "info.pixel_frame" in line


def test_the_object_masks_refuse_a_bad_frame_too(synth_clevr: Path) -> None:
    """Analysis reads the frame from the file's head, not through `load_scenes`."""
    from strop.evaluation.object_masks import pixel_frame
    from strop.scenes import parse_scene

    def edit(data):
        data["info"]["pixel_frame"] = [-48, -48]

    path = _edit_scenes(synth_clevr, "val", edit)
    scene = parse_scene(json.loads(path.read_text())["scenes"][0])
    with pytest.raises(SceneFileError, match=r"info\.pixel_frame"):
        pixel_frame(synth_clevr, "val", scene)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("3d_coords", [1e300, 0.0, 0.35]),
        ("3d_coords", [0.0, -5e6, 0.35]),
        ("pixel_coords", [1e12, 3, 9]),
    ],
)
def test_huge_finite_coordinates_are_refused(synth_clevr: Path, field: str, value) -> None:
    def edit(data):
        data["scenes"][1]["objects"][0][field] = value

    path = _edit_scenes(synth_clevr, "train", edit)
    with pytest.raises(SceneFileError) as err:
        load_scenes(path)
    assert "scene 1" in str(err.value) and f"objects[0].{field}" in str(err.value)


# --------------------------------------------------------------------------- run files


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """An experiment with one run: programs.parquet (K=64, scenes) and a config.json."""
    make_run(tmp_path / "exp" / "k64", k=64, n_train=30, n_val=10)
    RunFolder(tmp_path / "exp" / "k64").write_config({"model": {"k": 64}})
    return tmp_path / "exp" / "k64"


def _rewrite_codes(run: Path, codes: pa.Array, drop_length: bool = True) -> Path:
    path = run / "programs.parquet"
    table = pq.read_table(path)
    if drop_length:
        table = table.drop_columns(["length"])
    table = table.set_column(table.column_names.index("codes"), "codes", codes)
    pq.write_table(table, path)
    return path


def test_a_config_json_that_is_a_list(run: Path) -> None:
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match=r"config\.json: expected a JSON object, got a list"):
        RunFolder(run).read_config()
    for command in (["export", run], ["eval", run], ["analyze", run]):
        line = one_error_line(strop(*command), 1)
        assert str(run / "config.json") in line and "expected a JSON object" in line, command
    line = one_error_line(grammar("mine", run.parent, "--quiet"), 1)
    assert "config.json" in line and "expected a JSON object" in line


def test_a_codes_column_of_ints(run: Path) -> None:
    path = _rewrite_codes(run, pa.array(np.arange(40), pa.int64()))
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    assert str(err.value) == f"{path}: column codes is int64, expected lists of integers"
    assert "column codes is int64" in one_error_line(grammar("mine", run, "--quiet"), 1)


def test_float_codes_are_refused_not_truncated(run: Path) -> None:
    rows = pq.read_table(run / "programs.parquet").column("codes").to_pylist()
    path = _rewrite_codes(
        run, pa.array([[c + 0.7 for c in r] for r in rows], pa.list_(pa.float64()))
    )
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    assert str(err.value).startswith(f"{path}: column codes is list<")
    assert str(err.value).endswith(" double>, expected lists of integers")
    assert "expected lists of integers" in one_error_line(grammar("mine", run, "--quiet"), 1)


def test_a_null_inside_codes_is_named_as_such(run: Path) -> None:
    rows = pq.read_table(run / "programs.parquet").column("codes").to_pylist()
    rows[3] = rows[3][:2] + [None] + rows[3][3:]
    path = _rewrite_codes(run, pa.array(rows, pa.list_(pa.int32())), drop_length=False)
    with pytest.raises(RunFolderError) as err:
        read_programs(path)
    assert str(err.value).startswith(f"{path}: row 3 (")
    assert str(err.value).endswith("field codes: null at position 2")


@pytest.mark.parametrize("meta", [b"{not json", b"[1, 2]", b'{"codebook_size": "many"}'])
def test_corrupt_schema_metadata(run: Path, meta: bytes) -> None:
    path = run / "programs.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"strop": meta}), path)
    with pytest.raises(RunFolderError, match="schema metadata 'strop'"):
        read_programs(path)
    assert "schema metadata 'strop'" in one_error_line(grammar("mine", run, "--quiet"), 1)
    report = strop("report", run.parent)
    assert report.exit_code == 0 and "Traceback" not in report.output, report.output
    assert "schema metadata 'strop'" in (run.parent / "report.md").read_text()


def test_report_names_a_bad_eval_json_and_a_bad_metrics_row(run: Path) -> None:
    RunFolder(run).write_eval({"cos": 0.9, "length_vs_objects": [1, 2]})
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 1.0})
        + "\n"
        + json.dumps({"step": "20", "loss": 0.5})
        + "\n"
    )
    result = strop("report", run.parent)
    assert result.exit_code == 0 and result.exception is None, result.output
    text = (run.parent / "report.md").read_text()
    assert "eval.json: field length_vs_objects: expected an object, got a list" in text
    assert "metrics.jsonl: line 2 field step: expected an integer, got '20'" in text


# --------------------------------------------------------------------------- grammar


def test_a_code_of_10_to_the_20_in_a_text_corpus(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("1 2 3\n4 5 100000000000000000000\n")
    line = one_error_line(grammar("mine", corpus, "--quiet"), 1)
    assert str(corpus) in line and "line 2" in line and "100000000000000000000" in line


def test_max_n_that_overflows_the_packing_is_a_usage_error(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("1 2 3\n4 5 6\n" * 20)
    result = grammar("mine", corpus, "--quiet", "--k", "1000000", "--max-n", "4")
    line = one_error_line(result, 2)
    assert "--max-n 4" in line and "K=1000000" in line
    assert not (tmp_path / "grammar").exists()  # refused before any work


def test_disk_full_while_mining_is_one_line(tmp_path: Path) -> None:
    """A file-size limit fails every write past 16 KiB (EFBIG), as a full disk does."""
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(
            " ".join(map(str, rng.integers(0, 64, rng.integers(5, 20)))) + "\n" for _ in range(3000)
        )
    )

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    out = tmp_path / "mined"
    proc = subprocess.run(
        [script_path("strop-grammar"), "mine", str(corpus), "--out", str(out), "--quiet"],
        preexec_fn=small_files,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == f"error: {out}: cannot write the results (File too large)"
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- datasets


def test_hf_parquet_with_string_n_objects(synth_clevr: Path, tmp_path: Path) -> None:
    import datasets

    from strop.data.datasets import DataError, hf_clevr_dataset

    good = (synth_clevr / "images" / "val" / "CLEVR_val_000000.png").read_bytes()
    features = datasets.Features({"image": datasets.Image(), "n_objects": datasets.Value("string")})
    rows = {"image": [{"bytes": good, "path": None}] * 2, "n_objects": ["four", "five"]}
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    with pytest.raises(DataError) as err:
        hf_clevr_dataset(path, "train", 32)
    assert "index 0 field n_objects" in str(err.value) and "'four'" in str(err.value)
    line = one_error_line(strop("data", "inspect", path, "--image-size", 16), 1)
    assert "index 0 field n_objects" in line


# --------------------------------------------------------------------------- command lines


@pytest.mark.parametrize("command", ["export", "eval", "analyze", "cache-features"])
def test_device_tpu_is_a_usage_error(run: Path, command: str) -> None:
    args = ["--data", run, "--out", run / "cache"] if command == "cache-features" else [run]
    text = usage_error(strop(command, *args, "--device", "tpu"))
    assert "--device" in text and "tpu" in text
    assert not (run / "cache").exists()


def test_train_settings_that_cannot_work_fail_at_the_command_line(clevr: Path, tmp_path: Path):
    out = tmp_path / "run"
    base = ["train", "--data", clevr, "--preset", "tiny", "--teacher", "pixels", "--out", out]
    cases = {
        "train.device": [*base, "--set", "train.device=tpu"],
        "model.k": [*base, "--k", str(10**12)],
        "train.lr": [*base, "--set", "train.lr=1e999"],
    }
    for field, args in cases.items():
        line = one_error_line(strop(*args), 2)
        assert field in line, line
    assert not out.exists()  # nothing was started
    assert "less than or equal to 1048576" in usage_error(strop("model-info", "--k", str(10**12)))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--splits", "nan,1,1"], "--splits"),
        (["--splits", "1,inf,1"], "--splits"),
        (["--size", "200000"], "--size"),
    ],
)
def test_clevr_synth_refuses_impossible_values(tmp_path: Path, args, expected) -> None:
    out = tmp_path / "data"
    text = usage_error(strop("data", "clevr-synth", "--n", "5", "--out", out, *args))
    assert expected in text
    assert not out.exists()


def test_clevr_synth_of_10_to_the_11_scenes_starts_at_once(tmp_path: Path) -> None:
    """The plan is made as the rendering goes: the first image appears within seconds, in
    bounded memory, instead of after building 4 billion chunk descriptions."""
    out = tmp_path / "huge"
    proc = subprocess.Popen(
        [
            script_path("strop"),
            "data",
            "clevr-synth",
            "--n",
            str(10**11),
            "--size",
            "16",
            "--workers",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        first = out / "images" / "train" / "CLEVR_train_000000.png"
        while not first.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert first.is_file(), proc.stdout.read() if proc.poll() is not None else "no image yet"
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_a_model_name_over_255_characters_decodes(tmp_path: Path) -> None:
    from llm_decode.cli import app as llm_app

    make_run(tmp_path / "exp" / "k64", k=64, n_train=60, n_val=20)
    name = "org/" + "m" * 300
    result = CliRunner().invoke(
        llm_app,
        [
            "decode",
            "--model",
            name,
            "--k",
            "64",
            "--runs",
            str(tmp_path / "exp"),
            "--backend",
            "naive",
            "--test",
            "3",
            "--shots",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "exp" / "k64" / "llm").iterdir()
    assert len(folder.name) <= 128 and folder.name.startswith("org--mmm")
    assert json.loads((folder / "identity.json").read_text())["model"] == name
