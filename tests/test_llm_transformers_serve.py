"""`strop-llm decode` against a real third-party server: `transformers serve` on 127.0.0.1.

The model is a 2-layer Qwen2 with random weights and a small BPE tokenizer, built here
(`llm_decode.testing.tiny_chat_model`); the server loads it from a folder, offline. Its answers
are garbage, which is what the harness must handle: parse failures after exactly one retry,
complete and resumable results, no answered row lost when the server is killed mid-run.
Needs `transformers[serving]` (in the `test` extra); skipped with the reason when absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")

from llm_decode.backends.base import TransportStats  # noqa: E402
from llm_decode.protocol import ProtocolConfig  # noqa: E402
from llm_decode.runner import DecodeConfig, decode, plan  # noqa: E402
from llm_decode.testing.synthetic import make_run  # noqa: E402
from llm_decode.testing.tiny_chat_model import build_tiny_chat_model  # noqa: E402
from llm_decode.testing.transformers_server import TransformersServe  # noqa: E402
from strop.runs import read_jsonl  # noqa: E402

FINAL = ("ok", "parse_fail")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("tserve")
    model_dir = tiny_model
    server = TransformersServe(model_dir, root / "server.log")
    with server:
        yield server, model_dir


@pytest.fixture
def runs(tmp_path):
    make_run(tmp_path / "exp" / "k64", k=64, n_train=30, n_val=20)
    return tmp_path / "exp"


def cli(runs, server, model_dir, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llm_decode.cli", "decode", "--model", str(model_dir)]
    argv += ["--k", "64", "--runs", str(runs), "--shots", "3", "--base-url", server.base_url]
    argv += ["--timeout", "60", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=os.environ)


def final_rows(folder):
    return {r["key"]: r for r in read_jsonl(folder / "results.jsonl") if r["status"] in FINAL}


def test_garbage_answers_are_parse_failures_after_one_retry_and_resumable(served, runs):
    server, model_dir = served
    args = ("--test", "4", "--max-tokens", "12", "--concurrency", "2", "--structured")
    first = cli(runs, server, model_dir, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    (folder,) = (runs / "k64" / "llm").iterdir()
    rows = read_jsonl(folder / "results.jsonl")
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "parse_fail" and row["parse_attempts"] == 2  # exactly one retry
        assert row["attempts"] == 2 and row["error"]
        assert row["usage"]["completion_tokens"] == 24  # 12 per request, as the server counts
        assert row["finish_reason"] == "length"
    summary = (folder / "summary.json").read_text()
    assert '"parse_fails": 4' in summary and '"complete": true' in summary
    # the structured-output request reached the server, which says it ignores it
    assert "response_format" in server.log().split("Ignoring unsupported fields")[-1][:200]

    again = cli(runs, server, model_dir, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_jsonl(folder / "results.jsonl") == rows  # nothing sent, nothing rewritten
    assert (folder / "summary.json").read_text() == summary


def test_a_garbage_answer_overflowing_the_repair_turn_ends_as_a_parse_failure(
    tiny_model, runs, tmp_path
):
    """Issue 17: the server's 400 on the repair turn ("The prompt has N tokens, but the model
    takes at most L") used to be a transport error, and every rerun ended the same way."""
    from transformers import AutoTokenizer

    model_dir = tiny_model
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = DecodeConfig(model=str(model_dir), k=64, runs=runs, protocol=ProtocolConfig(shots=3))
    longest = max(
        len(tokenizer.apply_chat_template(j.messages, add_generation_prompt=True)["input_ids"])
        for j in plan(cfg).jobs
    )
    # every first turn fits; a first answer echoed back in the repair turn does not
    small = TransformersServe(model_dir, tmp_path / "small.log", max_model_len=longest + 40)
    args = ("--test", "4", "--max-tokens", "64", "--concurrency", "2")
    with small:
        first = cli(runs, small, model_dir, *args)
        assert first.returncode == 0, first.stderr[-2000:]
        (folder,) = (runs / "k64" / "llm").iterdir()
        rows = read_jsonl(folder / "results.jsonl")
        assert [r["status"] for r in rows] == ["parse_fail"] * 4
        for row in rows:
            assert "answer is not JSON" in row["error"] and "repair turn refused" in row["error"]
            assert f"takes at most {longest + 40}" in row["error"]  # the server's detail
            assert row["parse_attempts"] == 1 and row["attempts"] == 2
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["complete"] and summary["parse_fails"] == 4
        again = cli(runs, small, model_dir, *args)
        assert again.returncode == 0, again.stderr[-2000:]
        assert read_jsonl(folder / "results.jsonl") == rows  # nothing sent again
    assert small.log().count("POST /v1/chat/completions") == 8  # 4 answers, 4 refused repairs


def served_config(kind, served, runs, **fields):
    """A `kind` config (DecodeConfig or QAConfig) asking the served tiny model about `runs`."""
    server, model_dir = served
    return kind(
        model=str(model_dir), k=64, runs=runs, base_url=server.base_url, timeout=60, **fields
    )


def test_streaming_and_extra_body_reach_the_server(served, runs):
    def run(**overrides):
        stats = TransportStats()
        protocol = ProtocolConfig(shots=3, test=2, parse_retries=0)
        cfg = served_config(
            DecodeConfig, served, runs, max_tokens=6, protocol=protocol, **overrides
        )
        result = decode(cfg, stats=stats)
        rows = {r["image_id"]: r for r in read_jsonl(result.folder / "results.jsonl")}
        return rows, stats

    plain, stats = run()
    assert stats.chunks >= 2 * 4  # role, content pieces, the last with usage: a stream
    assert stats.tokens > 0 and stats.in_flight == 0
    think = {"chat_template_kwargs": {"enable_thinking": True}}
    thinking, _ = run(extra_body=think)
    # the template writes a marker when enable_thinking is true: more prompt tokens, the same
    # number for every image, so chat_template_kwargs arrived at the template
    extra = {
        thinking[i]["usage"]["prompt_tokens"] - plain[i]["usage"]["prompt_tokens"] for i in plain
    }
    assert len(extra) == 1 and extra.pop() > 0
    assert all(thinking[i]["key"] != plain[i]["key"] for i in plain)


def test_killing_the_server_mid_run_loses_no_answered_row(served, runs):
    server, model_dir = served
    args = ("--test", "12", "--max-tokens", "64", "--concurrency", "1", "--parse-retries", "0")
    args += ("--max-attempts", "2")
    argv = [sys.executable, "-m", "llm_decode.cli", "decode", "--model", str(model_dir)]
    argv += ["--k", "64", "--runs", str(runs), "--shots", "3", "--base-url", server.base_url]
    argv += ["--timeout", "60", *args]
    folder = runs / "k64" / "llm"
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            files = list(folder.glob("*/results.jsonl"))
            if files and len(read_jsonl(files[0])) >= 3:
                break
            time.sleep(0.05)
        server.kill()  # a crash mid-run, with requests in flight
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        server.start()  # restarted on the same port for the rerun (and later tests)
    (results,) = folder.glob("*/results.jsonl")
    answered = final_rows(results.parent)
    assert process.returncode == 1 and "rerun the same command" in stderr  # work failed
    assert 3 <= len(answered) < 12
    errors = [r for r in read_jsonl(results) if r["status"] == "error"]
    assert len(errors) == 12 - len(answered) and all("connection" in r["error"] for r in errors)

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = final_rows(results.parent)
    assert len(after) == 12
    for key, row in answered.items():  # every answered row kept as it was, never re-asked
        assert after[key] == row
    statuses = [r["status"] for r in read_jsonl(results)]
    assert statuses.count("ok") + statuses.count("parse_fail") == 12


def test_qa_over_transformers_serve_resumes_without_resending(served, runs):
    """`strop-llm qa` goes through the same machinery: garbage answers are parse failures
    after one retry, and a rerun sends only the questions without a final answer."""
    from llm_decode.qa.runner import QAConfig, run_qa

    protocol = ProtocolConfig(shots=3, test=2)
    cfg = served_config(QAConfig, served, runs, max_tokens=8, concurrency=2, protocol=protocol)
    first = run_qa(cfg)
    rows = read_jsonl(first.folder / "results.jsonl")
    assert first.sent == len(rows) == first.summary["n"] > 4 and first.summary["complete"]
    for row in rows:
        assert row["status"] in FINAL and row["usage"]["completion_tokens"] > 0
        if row["status"] == "parse_fail":  # garbage: exactly one repair retry
            assert row["parse_attempts"] == 2 and row["error"]
    # drop the last two answers as if the run had been killed before them
    lines = (first.folder / "results.jsonl").read_text().splitlines(keepends=True)
    (first.folder / "results.jsonl").write_text("".join(lines[:-2]))
    second = run_qa(cfg)
    assert second.sent == 2
    after = read_jsonl(second.folder / "results.jsonl")
    assert after[: len(lines) - 2] == rows[:-2]  # the answered rows untouched, not re-sent
    assert {r["key"] for r in after} == {r["key"] for r in rows}
    assert second.summary["n"] == first.summary["n"] and second.summary["complete"]
    assert run_qa(cfg).sent == 0
