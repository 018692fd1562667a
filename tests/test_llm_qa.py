"""`strop-llm qa`: the program executor, question templates, answer reading, baselines, real
CLEVR question files, and the shared runner against the repository's fake server (resume
without re-sending an answered question)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_decode.backends.baselines import KnnIndex
from llm_decode.protocol import ProtocolConfig
from llm_decode.qa.programs import FAMILIES, ProgramError, execute, family
from llm_decode.qa.questions import generate
from llm_decode.qa.runner import QAConfig, plan_qa, run_qa
from llm_decode.qa.scoring import QAParseError, parse_qa_answer, wilson_ci
from llm_decode.testing.fake_server import FakeServer
from llm_decode.testing.synthetic import make_run
from strop.runs import read_jsonl, read_programs
from strop.scenes import Scene, SceneObject, parse_scene


def obj(color, shape, material, size, x, y):
    return SceneObject.model_validate(
        {
            "color": color,
            "shape": shape,
            "material": material,
            "size": size,
            "3d_coords": (x, y, 0.35),
        }
    )


SCENE = Scene(
    image_index=3,
    image_filename="CLEVR_val_000003.png",
    split="val",
    objects=[
        obj("red", "cube", "metal", "large", 0, 0),
        obj("red", "sphere", "rubber", "small", 1, 1),
        obj("blue", "cube", "rubber", "small", 2, 2),
    ],
    # CLEVR's layout: relationships[rel][i] = the objects that are `rel` of object i
    relationships={
        "left": [[], [0], [0, 1]],
        "right": [[1, 2], [2], []],
        "front": [[], [], []],
        "behind": [[], [], []],
    },
)


def node(function, inputs=(), values=()):
    return {"function": function, "inputs": list(inputs), "value_inputs": list(values)}


def test_executor_answers_clevr_programs_by_hand():
    red = [node("scene"), node("filter_color", [0], ["red"])]
    assert execute([*red, node("count", [1])], SCENE) == "2"
    assert (
        execute([*red, node("filter_shape", [1], ["cylinder"]), node("exist", [2])], SCENE) == "no"
    )
    blue = [node("scene"), node("filter_color", [0], ["blue"]), node("unique", [1])]
    assert execute([*blue, node("query_size", [2])], SCENE) == "small"
    assert execute([*blue, node("relate", [2], ["left"]), node("count", [3])], SCENE) == "2"
    assert execute([*blue, node("same_size", [2]), node("count", [3])], SCENE) == "1"
    # "Are there more red things than cubes?" 2 vs 2
    cubes = [node("scene", []), node("filter_shape", [3], ["cube"]), node("count", [4])]
    program = [*red, node("count", [1]), *cubes, node("greater_than", [2, 5])]
    assert execute(program, SCENE) == "no"
    assert family(program) == "compare_count"
    # the later `type`/`side_inputs` spelling reads the same
    typed = [
        {"type": "scene", "inputs": []},
        {"type": "filter_material", "inputs": [0], "side_inputs": ["rubber"]},
        {"type": "count", "inputs": [1]},
    ]
    assert execute(typed, SCENE) == "2"
    with pytest.raises(ProgramError, match="unique: 2 objects"):
        execute([*red, node("unique", [1]), node("query_shape", [2])], SCENE)
    with pytest.raises(ProgramError, match="unknown"):
        execute([node("scene"), node("teleport", [0])], SCENE)


def test_relations_are_computed_when_a_scene_has_none():
    bare = SCENE.model_copy(update={"relationships": {}})
    program = [node("scene"), node("filter_color", [0], ["blue"]), node("unique", [1])]
    program += [node("relate", [2], ["left"]), node("count", [3])]
    # CLEVR's camera looks along +x/+y diagonals: the answer is a number, reproducibly
    assert execute(program, bare) == execute(program, bare)
    assert execute(program, bare).isdigit()


def test_templates_cover_every_family_with_executed_answers(tmp_path):
    programs = read_programs(make_run(tmp_path / "k64", k=64, n_train=4, n_val=1))
    scene = parse_scene(json.loads(programs.scene[0]))
    questions = generate(scene, seed=0)
    assert [q.family for q in questions] == list(FAMILIES)
    for q in questions:
        assert q.answer == execute(q.program, scene) and family(q.program) == q.family
        assert q.text.endswith("?")
    assert generate(scene, seed=0) == questions  # seeded by (seed, image index)
    assert generate(scene, seed=1) != questions


@pytest.mark.parametrize(
    "reply, answer",
    [
        ("yes", "yes"),
        ("Answer: 3", "3"),
        ("three.", "3"),
        ('"Metallic"', "metal"),
        ('{"answer": "cubes"}', "cube"),
        ("Let me think.\nThe scene has...\nFinal answer: no", "no"),
    ],
)
def test_answers_are_read_to_canonical_words(reply, answer):
    assert parse_qa_answer(reply).answer == answer


@pytest.mark.parametrize("reply", ["", '{"objects": []}', "maybe", "there are three red cubes"])
def test_unreadable_answers_are_parse_failures(reply):
    with pytest.raises(QAParseError):
        parse_qa_answer(reply)


def test_wilson_interval():
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_ci(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_ci(0, 0) is None


@pytest.fixture
def runs(tmp_path):
    make_run(tmp_path / "exp" / "k64", k=64, n_train=40, n_val=20)
    return tmp_path / "exp"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llm_decode.cli", "qa", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=os.environ)


def test_naive_and_knn_baselines_from_the_command_line(runs):
    for backend in ("naive", "knn"):
        done = cli(
            "--backend", backend, "--k", "64", "--runs", str(runs), "--shots", "20", "--test", "6"
        )
        assert done.returncode == 0, done.stderr
        folder = runs / "k64" / "llm" / "qa" / backend
        summary = json.loads((folder / "summary.json").read_text())
        assert set(summary["families"]) == set(FAMILIES) and summary["complete"]
        assert summary["n"] == sum(f["n"] for f in summary["families"].values()) > 30
        for stats in summary["families"].values():
            assert (
                0 <= stats["accuracy"] <= 1
                and stats["ci"][0] <= stats["accuracy"] <= stats["ci"][1]
            )
        assert summary["question_sources"] == {"generated": summary["n"]}
        assert summary["task"] == "qa" and summary["mode"] == "codes"
        assert f"qa/{backend}" in done.stderr and "accuracy" in done.stderr
    # naive: one answer per family, the majority over the shot images' questions
    rows = read_jsonl(runs / "k64" / "llm" / "qa" / "naive" / "results.jsonl")
    by_family: dict[str, set[str]] = {}
    for row in rows:
        by_family.setdefault(row["truth"]["family"], set()).add(row["parsed"]["answer"])
    assert all(len(answers) == 1 for answers in by_family.values())
    # knn: the question executed on the nearest shot program's scene (or its family's majority)
    cfg = QAConfig(
        model="knn", k=64, runs=runs, backend="knn", protocol=ProtocolConfig(shots=20, test=6)
    )
    p = plan_qa(cfg)
    programs = read_programs(runs / "k64" / "programs.parquet")
    index = KnnIndex([programs.codes[r].tolist() for r in p.selection.shots], 64)
    rows = read_jsonl(runs / "k64" / "llm" / "qa" / "knn" / "results.jsonl")
    ran = 0
    for row, job in zip(rows, p.jobs, strict=True):
        neighbour = parse_scene(
            json.loads(programs.scene[p.selection.shots[index.nearest(job.codes)]])
        )
        question = next(
            q
            for q in generate(parse_scene(json.loads(programs.scene[job.row])), 0)
            if q.text == job.truth.question
        )
        try:
            assert row["parsed"]["answer"] == execute(question.program, neighbour)
            ran += 1
        except ProgramError:
            pass
    assert ran > len(rows) // 2
    report = subprocess.run(
        [sys.executable, "-m", "llm_decode.cli", "report", "--runs", str(runs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    text = (runs / "llm_report.md").read_text()
    assert "## Questions over codes" in text and "| knn | 64 | codes |" in text
    # and in `strop report`, one row per (model, K) with per-family accuracy [CI] (n)
    from strop.evaluation.report import build_report

    md, html = build_report(runs, out_dir=runs / "report")
    knn = json.loads((runs / "k64" / "llm" / "qa" / "knn" / "summary.json").read_text())
    count = knn["families"]["count"]
    cell = f"{count['accuracy']:.3f} [{count['ci'][0]:.3f}, {count['ci'][1]:.3f}] (n={count['n']})"
    row = next(line for line in md.read_text().splitlines() if line.startswith("| knn | 64"))
    assert cell in row and 'data-table="qa"' in html.read_text()


def test_qa_command_line_has_decode_options_less_scene_ones_plus_its_own():
    done = subprocess.run(
        [sys.executable, "-m", "llm_decode.cli", "qa", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0
    for option in ("--oracle", "--questions", "--base-url", "--concurrency", "--max-attempts"):
        assert option in done.stdout
    for option in ("--structured", "--matching", "--permute-codes"):
        assert option not in done.stdout


def test_oracle_mode_sends_the_scene_and_refuses_baselines(runs):
    done = cli("--backend", "naive", "--oracle", "--k", "64", "--runs", str(runs))
    assert done.returncode == 2 and done.stderr.startswith("error: --oracle")
    p = plan_qa(
        QAConfig(
            model="qwen3.5", k=64, runs=runs, oracle=True, protocol=ProtocolConfig(shots=3, test=1)
        )
    )
    system, user = (m["content"] for m in p.jobs[0].messages)
    assert "Scene: {" in system and "Codes:" not in system and user.startswith('Scene: {"objects"')
    assert p.identity["mode"] == "scene"


def write_questions(root: Path, scenes: list[Scene]) -> Path:
    """A CLEVR v1.0 questions file: one count question per scene, with its program."""
    items = []
    for s in scenes:
        program = [node("scene"), node("filter_size", [0], ["large"]), node("count", [1])]
        items.append(
            {
                "question": "How many large things are there?",
                "answer": execute(program, s),
                "image_index": s.image_index,
                "split": s.split,
                "program": program,
            }
        )
    path = root / "CLEVR_v1.0" / "questions" / "CLEVR_val_questions.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"info": {}, "questions": items}))
    return path


def test_real_clevr_question_files_are_read(runs, tmp_path):
    programs = read_programs(runs / "k64" / "programs.parquet")
    scenes = [parse_scene(json.loads(s)) for s in programs.scene]
    path = write_questions(tmp_path / "data", [s for s in scenes if s.split == "val"])
    for given in (path, tmp_path / "data"):
        cfg = QAConfig(
            model="knn",
            k=64,
            runs=runs,
            backend="knn",
            questions=given,
            protocol=ProtocolConfig(shots=20, test=5),
        )
        result = run_qa(cfg)
        s = result.summary
        assert s["question_sources"] == {"clevr": 5} and s["families"]["count"]["n"] == 5
        assert s["question_files"] == [str(path)]
    bad = tmp_path / "bad.json"
    bad.write_text('{"questions": [{"question": "?"}]}')
    done = cli(
        "--backend",
        "naive",
        "--k",
        "64",
        "--runs",
        str(runs),
        "--shots",
        "20",
        "--questions",
        str(bad),
    )
    assert done.returncode == 1 and "question 0: missing field answer" in done.stderr


def qa_config(runs, base_url, **overrides):
    fields = {"model": "qwen3.5", "k": 64, "backoff_base": 0.05, "backoff_cap": 0.2, "timeout": 5}
    fields.update(overrides, runs=runs, base_url=base_url)
    fields["protocol"] = ProtocolConfig(**{"shots": 10, "test": 4, **fields.get("protocol", {})})
    return QAConfig(**fields)


def test_fake_server_answers_scored_and_resume_sends_only_unanswered(runs):
    programs = read_programs(runs / "k64" / "programs.parquet")
    answers = {" ".join(map(str, c.tolist())): "yes" for c in programs.codes}
    with FakeServer(answers=answers, die_after=7) as server:
        first = run_qa(qa_config(runs, server.base_url, concurrency=1, max_attempts=1))
        assert not server.alive
    done = [r for r in read_jsonl(first.folder / "results.jsonl") if r["status"] == "ok"]
    total = first.summary["n"] + first.summary["missing"]
    assert len(done) == 7 and first.summary["missing"] == total - 7
    assert all(r["parsed"]["answer"] == "yes" for r in done)  # '"yes"' read as yes
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    with FakeServer(answers=answers, port=port) as server:  # restarted at the same URL
        second = run_qa(qa_config(runs, server.base_url, concurrency=2))
        assert server.stats()["requests"] == total - 7 == second.sent
    s = second.summary
    assert s["complete"] and s["n"] == total and s["parse_fails"] == 0
    yes_no = [r for r in read_jsonl(second.folder / "results.jsonl") if r["status"] == "ok"]
    right = sum(r["scores"]["correct"] for r in yes_no)
    assert s["overall"]["correct"] == right and right == sum(
        r["truth"]["answer"] == "yes" for r in yes_no
    )
    assert second.folder == runs / "k64" / "llm" / "qa" / "qwen3.5"
    with FakeServer(answers=answers, port=port) as server:  # complete: nothing is sent again
        third = run_qa(qa_config(runs, server.base_url))
        assert third.sent == 0 and server.stats()["requests"] == 0


def test_qa_command_fills_every_replica_of_a_data_parallel_server(runs):
    """`strop-llm qa` without --concurrency: 8 requests in flight per copy the server runs."""
    with FakeServer(replicas=3, delay=1.0) as server:
        done = cli(
            *"--model m --k 64 --shots 10 --test 6".split(),
            "--runs",
            str(runs),
            "--base-url",
            server.base_url,
            "--max-attempts",
            "1",
        )
        stats = server.stats()
    assert stats["requests"] > 16 and done.returncode in (0, 1), done.stderr
    assert stats["max_in_flight"] > 8  # one copy's 8 would be the most before


def test_unreadable_answer_gets_one_repair_retry(runs):
    with FakeServer() as server:  # answers a scene JSON, which is no answer word
        result = run_qa(qa_config(runs, server.base_url, protocol={"test": 1}))
    rows = read_jsonl(result.folder / "results.jsonl")
    assert rows and all(r["status"] == "parse_fail" and r["parse_attempts"] == 2 for r in rows)
    assert (
        result.summary["parse_fails"] == len(rows) and result.summary["overall"]["accuracy"] == 0.0
    )
