"""`strop-llm qa` against hostile inputs (issue 25): a questions file's split read from the
file, never from the hash order of a set; questions never attached to the shot images by
default; one writer per results folder (two real processes); answers kept as CLEVR writes
them; duplicate questions counted once; program indices that point nowhere; a FIFO; question
files not in CLEVR's shape; a run killed midway resumes without asking again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_error_line
from typer.testing import CliRunner

from llm_decode.cli import app as llm_app
from llm_decode.protocol import ProtocolConfig
from llm_decode.qa.programs import ProgramError, execute
from llm_decode.qa.questions import generate
from llm_decode.qa.runner import QAConfig, run_qa
from llm_decode.testing.fake_server import FakeServer
from llm_decode.testing.synthetic import make_run
from strop.runs import read_jsonl, read_programs
from strop.scenes import Scene, parse_scene

# make_run numbers images across splits: train 0..39, val 40..59
N_TRAIN, N_VAL = 40, 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_inputs")
    make_run(root / "exp" / "k64", k=64, n_train=N_TRAIN, n_val=N_VAL)
    return root / "exp"


@pytest.fixture(scope="module")
def scenes(runs) -> list[Scene]:
    programs = read_programs(runs / "k64" / "programs.parquet")
    return [parse_scene(json.loads(s)) for s in programs.scene]


def clevr_items(scenes: list[Scene], split_field: bool = True) -> list[dict]:
    """One question per scene, as CLEVR v1.0 writes it (`split` per question unless told)."""
    items = []
    for s in scenes:
        q = generate(s, 0)[0]
        item = {"question": q.text, "answer": q.answer, "image_index": s.image_index}
        item.update(program=q.program, image_filename=s.image_filename)
        if split_field:
            item["split"] = s.split
        items.append(item)
    return items


def write(path: Path, items: list[dict], info: dict | None = None) -> Path:
    path.write_text(json.dumps({"info": info or {}, "questions": items}))
    return path


def qa(runs, *args):
    base = ["qa", "--backend", "knn", "--k", "64", "--runs", str(runs), "--shots", "20"]
    return CliRunner().invoke(llm_app, [*base, "--test", "5", *(str(a) for a in args)])


def config(runs, questions, **protocol) -> QAConfig:
    protocol = {"shots": 20, "test": 5, **protocol}
    return QAConfig(
        model="knn", k=64, runs=runs, backend="knn", questions=questions,
        protocol=ProtocolConfig(**protocol),
    )  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_results(runs):
    import shutil

    shutil.rmtree(runs / "k64" / "llm", ignore_errors=True)


# ----------------------------------------------------------------- which images, which split


def test_two_splits_in_the_name_and_none_in_the_file_is_refused_under_every_hash_seed(
    runs, scenes, tmp_path
):
    """Before: the split was the first of a `set` that the name contains, so the result
    moved with PYTHONHASHSEED (val: refused; train: questions on the shot images)."""
    val = [s for s in scenes if s.split == "val"]
    items = clevr_items(val, split_field=False)
    for item in items:  # indices that exist in both splits: attaching to train "works"
        item["image_index"] -= N_TRAIN
    path = write(tmp_path / "CLEVR_train_val_questions.json", items)
    argv = [sys.executable, "-m", "llm_decode.cli", "qa", "--backend", "knn", "--k", "64"]
    argv += ["--runs", str(runs), "--shots", "20", "--test", "5", "--questions", str(path)]
    outcomes = set()
    for seed in ("0", "1", "2", "3"):  # 0 read val, 3 train on the old code
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        outcomes.add((done.returncode, done.stderr.strip()))
    assert len(outcomes) == 1, outcomes
    ((code, stderr),) = outcomes
    assert code == 1 and stderr.count("\n") == 0 and stderr.startswith("error: "), stderr
    assert str(path) in stderr and "split" in stderr and "train, val" in stderr
    assert not (runs / "k64" / "llm" / "qa" / "knn" / "results.jsonl").exists()


def test_a_file_without_any_split_is_refused_not_put_on_the_shot_images(runs, scenes, tmp_path):
    """Before: a neutral name meant `sorted(splits)[0]`, train: the shot images."""
    items = clevr_items(scenes, split_field=False)
    line = one_error_line(qa(runs, "--questions", write(tmp_path / "mine.json", items)), 1)
    assert "mine.json" in line and "question 0" in line and "split" in line


def test_the_split_comes_from_the_file_info_or_each_question_not_its_name(runs, scenes, tmp_path):
    val = [s for s in scenes if s.split == "val"]
    # CLEVR's info.split, no split per question, a name that names none
    path = write(tmp_path / "questions.json", clevr_items(val, False), {"split": "val"})
    assert run_qa(config(runs, path)).summary["question_sources"] == {"clevr": 5}
    # per-question splits win over a name that says train: the val questions stay on val
    path = write(tmp_path / "CLEVR_train_questions.json", clevr_items(scenes))
    result = run_qa(config(runs, path))
    assert result.summary["question_sources"] == {"clevr": 5}
    rows = read_jsonl(result.folder / "results.jsonl")
    asked = {(s.image_filename, generate(s, 0)[0].text) for s in val}
    assert {(r["image_id"] + ".png", r["truth"]["question"]) for r in rows} <= asked
    # a question whose split contradicts the file's info is refused, naming both
    items = clevr_items(val)
    items[3]["split"] = "train"
    line = one_error_line(qa(runs, "--questions", write(tmp_path / "q.json", items, {"split": "val"})), 1)  # fmt: skip
    assert "question 3" in line and "'train'" in line and "'val'" in line


def test_a_file_named_by_split_with_no_split_inside_still_reads(runs, scenes, tmp_path):
    val = [s for s in scenes if s.split == "val"]
    path = write(tmp_path / "CLEVR_val_questions.json", clevr_items(val, False))
    assert run_qa(config(runs, path)).summary["question_sources"] == {"clevr": 5}


def test_train_questions_reach_the_shot_images_only_when_asked_for(runs, scenes, tmp_path):
    """Questions about train images, named so, are the user's explicit choice: the shot
    examples use them; the test images still get generated questions."""
    train = [s for s in scenes if s.split == "train"]
    path = write(tmp_path / "CLEVR_train_questions.json", clevr_items(train))
    s = run_qa(config(runs, path)).summary
    assert set(s["question_sources"]) == {"generated"}


# ----------------------------------------------------------------- weak items


@pytest.mark.parametrize(
    "written, canonical", [("True", "yes"), ("ball", "sphere"), ("Yes", "yes")]
)
def test_answers_that_are_not_clevr_words_are_refused_not_coerced(
    runs, scenes, tmp_path, written, canonical
):
    items = clevr_items([s for s in scenes if s.split == "val"])
    items[2]["answer"] = written
    line = one_error_line(qa(runs, "--questions", write(tmp_path / "q.json", items)), 1)
    assert "question 2 field answer" in line and repr(written) in line and canonical in line


def test_identical_questions_are_counted_once(runs, scenes, tmp_path):
    val = [s for s in scenes if s.split == "val"]
    once = write(tmp_path / "once.json", clevr_items(val))
    n = run_qa(config(runs, once)).summary["n"]
    fifty = write(tmp_path / "fifty.json", clevr_items(val) * 50)
    s = run_qa(config(runs, fifty)).summary
    assert s["n"] == n == 5 and s["question_duplicates"] == 49 * len(val)
    # the same question about the same image with another answer is a contradiction
    items = clevr_items(val)
    twin = {**items[0], "answer": "yes" if items[0]["answer"] != "yes" else "no"}
    line = one_error_line(qa(runs, "--questions", write(tmp_path / "c.json", [*items, twin])), 1)
    assert f"question {len(items)}" in line and "question 0" in line and "answer" in line


@pytest.mark.parametrize("bad", [-1, 7, True, 1.0])
def test_program_inputs_that_point_nowhere_are_refused(runs, scenes, tmp_path, bad):
    items = clevr_items([s for s in scenes if s.split == "val"])
    items[1]["program"][1]["inputs"] = [bad]
    line = one_error_line(qa(runs, "--questions", write(tmp_path / "q.json", items)), 1)
    assert "question 1 field program" in line and f"[{bad!r}]" in line.replace("'", "")


def test_executor_refuses_a_negative_input():
    scene = Scene(image_index=0, image_filename="CLEVR_val_000000.png", split="val", objects=[])
    with pytest.raises(ProgramError, match=r"\[-1\]"):
        execute([{"function": "scene", "inputs": []}, {"function": "count", "inputs": [-1]}], scene)


def test_questions_at_a_fifo_is_not_a_regular_file(runs, tmp_path):
    fifo = tmp_path / "questions.json"
    os.mkfifo(fifo)
    line = one_error_line(qa(runs, "--questions", fifo), 1)
    assert str(fifo) in line and "not a regular file" in line


# ----------------------------------------------------------------- one writer per folder


def test_a_second_qa_run_into_the_same_folder_is_refused_while_the_first_runs(runs):
    """Two real processes against one real loopback server: the second refuses in one line
    naming the first's pid and sends nothing; the lock goes when the first is killed, and
    a rerun then resumes with one row per request."""
    folder = runs / "k64" / "llm" / "qa" / "qwen3.5"
    with FakeServer(delay=60.0) as server:  # the first run's first answer never comes in time
        argv = [sys.executable, "-m", "llm_decode.cli", "qa", "--k", "64", "--runs", str(runs)]
        argv += ["--base-url", server.base_url, "--model", "qwen3.5", "--shots", "10"]
        argv += ["--test", "2", "--concurrency", "1", "--timeout", "120"]
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 90
            while server.stats()["requests"] < 1:  # the first run is mid-request
                assert first.poll() is None and time.monotonic() < deadline, first.communicate()
                time.sleep(0.1)
            quick = [*argv, "--timeout", "2", "--max-attempts", "1"]  # old code: fails fast
            second = subprocess.run(quick, capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, second.stderr
            line = second.stderr.strip()
            assert line.startswith("error: ") and "\n" not in line, line
            assert str(folder) in line and f"pid {first.pid}" in line
            assert server.stats()["requests"] == 1  # the first run's one request, no other
            assert (folder / ".lock").read_text().strip() == str(first.pid)
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate()
    programs = read_programs(runs / "k64" / "programs.parquet")
    answers = {" ".join(map(str, c.tolist())): "yes" for c in programs.codes}
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    with FakeServer(answers=answers, port=port) as server:  # the same endpoint: same folder
        cfg = QAConfig(
            model="qwen3.5", k=64, runs=runs, base_url=server.base_url,
            protocol=ProtocolConfig(shots=10, test=2),
        )  # fmt: skip
        result = run_qa(cfg)
    keys = [r["key"] for r in read_jsonl(result.folder / "results.jsonl")]
    assert result.folder == folder and result.summary["complete"]
    assert len(keys) == len(set(keys)) == result.summary["n"]


def test_decode_takes_the_same_lock_on_its_results_folder(runs):
    """`strop-llm decode` runs through the same `decode` and refuses a folder another process
    holds, before any work, naming that process; a rerun once it is gone completes."""
    base = ["decode", "--backend", "knn", "--k", "64", "--runs", str(runs), "--shots", "20"]
    base += ["--test", "3"]
    assert CliRunner().invoke(llm_app, base).exit_code == 0
    folder = runs / "k64" / "llm" / "knn"
    rows = len(read_jsonl(folder / "results.jsonl"))
    hold = "import sys, time; from strop.runs import RunLock; RunLock(sys.argv[1]).acquire(); "
    hold += "print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = one_error_line(CliRunner().invoke(llm_app, base), 1)
        assert str(folder) in line and f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.communicate()
    assert CliRunner().invoke(llm_app, base).exit_code == 0
    assert len(read_jsonl(folder / "results.jsonl")) == rows  # resumed, nothing sent twice


# --------------------------------------------------------------------------- question files


@pytest.fixture
def qa_runs(tmp_path: Path) -> Path:
    from llm_decode.testing.synthetic import make_run

    make_run(tmp_path / "exp" / "k64", k=64, n_train=30, n_val=10)
    return tmp_path / "exp"


def qa_cli(runs: Path, *args: object):
    from llm_decode.cli import app as llm_app

    base = ["qa", "--k", "64", "--runs", str(runs), "--shots", "10", "--test", "3"]
    return CliRunner().invoke(llm_app, [*base, *(str(a) for a in args)])


def clevr_question(**fields: object) -> dict:
    """One question in CLEVR v1.0's shape, about val image 0 (a count, with its program)."""
    program = [
        {"function": "scene", "inputs": [], "value_inputs": []},
        {"function": "count", "inputs": [0], "value_inputs": []},
    ]
    item = {"question": "How many things are there?", "answer": "3", "image_index": 0}
    item.update(split="val", program=program)
    item.update(fields)
    return {k: v for k, v in item.items() if v is not ...}


BAD_QUESTION_FILES = [
    ("[]", "expected a JSON object, got a list"),
    ('{"questions": {"a": 1}}', "field questions: expected a list of questions, got a dict"),
    ('{"questions": null}', "field questions: expected a list of questions, got null"),
    ('{"questions": ["How many?"]}', "question 0: expected an object, got a str"),
    ('{"questions": [[1, 2]]}', "question 0: expected an object, got a list"),
    ('{"questions": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
]


BAD_QUESTIONS = [
    ({"answer": ...}, "question 0: missing field answer"),
    ({"image_index": ...}, "question 0: missing field image_index"),
    ({"answer": None}, "question 0 field answer: expected a string"),
    ({"answer": {"a": 1}}, "question 0 field answer: expected a string"),
    ({"answer": "purple-ish"}, "question 0 field answer: not a CLEVR answer"),
    ({"question": None}, "question 0 field question: expected a non-empty string"),
    ({"image_index": "0"}, "question 0 field image_index: expected a whole number >= 0"),
    ({"image_index": 0.7}, "question 0 field image_index: expected a whole number >= 0"),
    ({"image_index": True}, "question 0 field image_index: expected a whole number >= 0"),
    ({"image_index": -1}, "question 0 field image_index: expected a whole number >= 0"),
    ({"image_index": 1e400}, "question 0 field image_index: expected a whole number >= 0"),
    ({"split": 3}, "question 0 field split: expected a string"),
    ({"program": "abc"}, "question 0 field program: expected a list of program nodes"),
    ({"program": [1, 2]}, "question 0 field program: expected a list of program nodes"),
    ({"program": [{"inputs": [0]}]}, "question 0 field program: program node without a function"),
]


@pytest.mark.parametrize(("text", "says"), BAD_QUESTION_FILES)
def test_question_files_that_are_not_clevrs_shape(qa_runs: Path, tmp_path, text, says) -> None:
    path = tmp_path / "CLEVR_val_questions.json"
    path.write_text(text)
    line = one_error_line(qa_cli(qa_runs, "--backend", "naive", "--questions", path), 1)
    assert str(path) in line and says in line


@pytest.mark.parametrize(("fields", "says"), BAD_QUESTIONS)
def test_questions_with_missing_or_wrong_fields(qa_runs: Path, tmp_path, fields, says) -> None:
    """A null answer used to be asked as the word "none", an image index of 0.7 as 0."""
    path = tmp_path / "CLEVR_val_questions.json"
    text = json.dumps({"questions": [clevr_question(**fields)]})
    path.write_text(text.replace("Infinity", "1e400"))
    line = one_error_line(qa_cli(qa_runs, "--backend", "naive", "--questions", path), 1)
    assert str(path) in line and says in line
    assert not (qa_runs / "k64" / "llm").exists()


@pytest.mark.parametrize(
    ("items", "says"),
    [
        ([], "no questions in"),
        ([clevr_question(image_index=999_999)], "none of its 1 questions"),
        ([clevr_question(split="test")], "(split test, image_index 0..0)"),
    ],
)
def test_a_named_question_file_about_no_image_of_the_run(qa_runs, tmp_path, items, says) -> None:
    """Used to fall back to generated questions, with only a count in summary.json saying so."""
    path = tmp_path / "CLEVR_val_questions.json"
    path.write_text(json.dumps({"info": {}, "questions": items}))
    line = one_error_line(qa_cli(qa_runs, "--backend", "knn", "--questions", path), 1)
    assert f"--questions {path}" in line and says in line


def test_knn_falls_back_on_a_program_that_cannot_run_on_the_neighbour(qa_runs, tmp_path) -> None:
    """A real question's program with a node fed the wrong kind of input (a set where an
    object is due) raised a TypeError out of the knn baseline; now it falls back like any
    program that cannot run on the neighbour's scene."""
    from llm_decode.qa.programs import ProgramError, execute
    from llm_decode.qa.questions import generate
    from strop.runs import read_programs
    from strop.scenes import parse_scene

    programs = read_programs(qa_runs / "k64" / "programs.parquet")
    scene = parse_scene(json.loads(programs.scene[0]))
    odd = [
        {"function": "scene", "inputs": [], "value_inputs": []},
        {"function": "query_color", "inputs": [0], "value_inputs": []},
    ]
    with pytest.raises(ProgramError, match="query_color: cannot be evaluated"):
        execute(odd, scene)
    with pytest.raises(ProgramError, match="inputs must be a list of node indices"):
        execute([{"function": "scene", "inputs": "0"}], scene)
    assert all(q.answer == execute(q.program, scene) for q in generate(scene, 0))
    items = [
        clevr_question(image_index=i, split=s, program=odd, answer="red", question="What color?")
        for s, i in {
            (p.split, p.image_index) for p in map(parse_scene, map(json.loads, programs.scene))
        }
    ]
    path = tmp_path / "CLEVR_val_questions.json"
    path.write_text(json.dumps({"questions": items}))
    done = qa_cli(qa_runs, "--backend", "knn", "--questions", path)
    assert done.exit_code == 0, done.output
    summary = json.loads((qa_runs / "k64" / "llm" / "qa" / "knn" / "summary.json").read_text())
    assert summary["question_sources"] == {"clevr": 3} and summary["complete"]


def test_a_named_question_folder_without_question_files(qa_runs: Path, tmp_path: Path) -> None:
    """Said "no questions in " and nothing after it."""
    folder = tmp_path / "data"
    folder.mkdir()
    line = one_error_line(qa_cli(qa_runs, "--backend", "naive", "--questions", folder), 1)
    assert f"--questions {folder}: no questions/CLEVR_<split>_questions.json under it" in line
    assert "(train, val)" in line


def test_qa_killed_mid_run_resumes_without_resending(qa_runs: Path) -> None:
    """SIGKILL of `strop-llm qa` after some answers: the rerun (same server URL) sends only
    the unanswered questions and the results file holds each question once."""
    import signal

    from llm_decode.testing.fake_server import FakeServer
    from strop.runs import read_jsonl

    results = qa_runs / "k64" / "llm" / "qa" / "qwen3.5" / "results.jsonl"
    argv = [sys.executable, "-m", "llm_decode.cli", "qa", "--model", "qwen3.5", "--k", "64"]
    argv += ["--runs", str(qa_runs), "--shots", "10", "--test", "3", "--concurrency", "1"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    with FakeServer(answers={}, delay=0.1) as server:
        proc = subprocess.Popen(
            [*argv, "--base-url", server.base_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.is_file() and len(results.read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        port = server.base_url
    kept = len(read_jsonl(results))
    assert proc.returncode == -signal.SIGKILL and kept >= 3
    with FakeServer(answers={}, port=int(port.rsplit(":", 1)[1].split("/")[0])) as server:
        done = subprocess.run(
            [*argv, "--base-url", server.base_url], capture_output=True, text=True, env=env
        )
        sent = server.stats()["requests"]
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(results)
    summary = json.loads((results.parent / "summary.json").read_text())
    assert summary["complete"] and summary["n"] == len(rows)
    assert len({r["key"] for r in rows}) == len(rows)
    assert sent == 2 * (len(rows) - kept)  # each unreadable reply gets one repair retry
