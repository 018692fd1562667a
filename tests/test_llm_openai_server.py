"""The openai backend against a real HTTP server process on 127.0.0.1 (llm_decode.testing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial

import pytest
from conftest import decode_config

from llm_decode.backends.replicas import server_replicas
from llm_decode.runner import decode
from llm_decode.testing.fake_server import FakeServer
from strop.runs import read_jsonl

SECRET = "sk-test-0123456789abcdefSECRET"


config = partial(decode_config, model="qwen3.5", shots=None, backoff_base=0.05, backoff_cap=0.2)


def rows_of(result):
    return read_jsonl(result.folder / "results.jsonl")


def test_success_structured_then_rerun_sends_nothing(exp):
    runs, answers = exp
    with FakeServer(answers=answers) as server:
        result = decode(config(runs, server.base_url, structured=True, concurrency=4))
        s = result.summary
        assert (s["n"], s["parse_fails"], s["missing"], s["count_err"], s["attr_acc"]) == (
            15,
            0,
            0,
            0.0,
            1.0,
        )
        assert s["ap"] == {"inf": 1.0, "1": 1.0, "0.5": 1.0, "0.25": 1.0, "0.125": 1.0}
        stats = server.stats()
        assert stats["requests"] == 15 and stats["response_formats"] == 15
        sent = stats["last_request"]
        assert sent["model"] == "Qwen/Qwen3.5-397B-A17B" and sent["seed"] == 0
        assert sent["temperature"] == 0 and sent["response_format"]["type"] == "json_schema"
        rows = rows_of(result)
        assert len(rows) == 15 and all(r["status"] == "ok" for r in rows)
        assert all(r["usage"]["completion_tokens"] > 0 and r["latency_s"] > 0 for r in rows)
        assert len({r["prompt_sha256"] for r in rows}) == 15

        again = decode(config(runs, server.base_url, structured=True, concurrency=4))
        assert again.sent == 0 and server.stats()["requests"] == 15
        assert again.summary["ap"] == s["ap"] and len(rows_of(again)) == 15
        # a different protocol is a different key: it is sent, not served from old rows
        decode(config(runs, server.base_url, structured=True, protocol={"test": 3, "seed": 1}))
        assert server.stats()["requests"] == 18
    summary = json.loads((result.folder / "summary.json").read_text())
    for field in ("n", "parse_fails", "count_err", "attr_acc", "pos_mse", "pos_mae", "ap"):
        assert field in summary
    assert {"shots", "test", "seed", "temperature"} <= set(summary["protocol"])


def test_invalid_json_then_retry(exp):
    runs, answers = exp
    with FakeServer(answers=answers, invalid_first=1) as server:
        s = decode(config(runs, server.base_url, protocol={"test": 5})).summary
        assert s["parse_fails"] == 0 and s["attr_acc"] == 1.0
        assert server.stats()["requests"] == 10
    with FakeServer(answers=answers, invalid_first=2) as server:
        result = decode(config(runs, server.base_url, model="other", protocol={"test": 5}))
        assert result.summary["parse_fails"] == 5 and result.summary["n"] == 5
        rows = rows_of(result)
        assert all(r["status"] == "parse_fail" and r["parse_attempts"] == 2 for r in rows)
        assert all("not JSON" in r["error"] for r in rows)
        # a parse failure is a final answer: the rerun sends nothing
        assert decode(config(runs, server.base_url, model="other", protocol={"test": 5})).sent == 0
        assert server.stats()["requests"] == 10


def test_429_honours_retry_after(exp):
    runs, answers = exp
    with FakeServer(answers=answers, status_script=[429], retry_after=0.6) as server:
        start = time.perf_counter()
        result = decode(config(runs, server.base_url, concurrency=1, protocol={"test": 2}))
        elapsed = time.perf_counter() - start
        assert result.summary["missing"] == 0
        assert server.stats()["statuses"] == {"429": 1, "200": 2}
    assert elapsed >= 0.6  # the computed backoff (<= 0.2 s) alone would be shorter
    assert sorted(r["attempts"] for r in rows_of(result)) == [1, 2]


def test_5xx_are_retried_and_400_is_not(exp):
    runs, answers = exp
    with FakeServer(answers=answers, status_script=[500, 503, 502]) as server:
        result = decode(config(runs, server.base_url, concurrency=1, protocol={"test": 2}))
        assert result.summary["missing"] == 0 and server.stats()["requests"] == 5
        assert sorted(r["attempts"] for r in rows_of(result)) == [1, 4]
    with FakeServer(answers=answers, status_script=[400]) as server:
        result = decode(
            config(runs, server.base_url, model="m400", concurrency=1, protocol={"test": 3})
        )
        assert server.stats()["requests"] == 3  # the 400 was not resent
        assert result.summary["missing"] == 1 and result.summary["n"] == 2
        errors = [r for r in rows_of(result) if r["status"] == "error"]
        assert len(errors) == 1 and errors[0]["error"].startswith("HTTP 400")
        # error rows are retried by the next run, and only they
        again = decode(
            config(runs, server.base_url, model="m400", concurrency=1, protocol={"test": 3})
        )
        assert again.sent == 1 and again.summary["complete"] and server.stats()["requests"] == 4


def test_5xx_gives_up_after_max_attempts(exp):
    runs, answers = exp
    with FakeServer(answers=answers, status_script=[500] * 10) as server:
        result = decode(
            config(runs, server.base_url, concurrency=1, max_attempts=3, protocol={"test": 1})
        )
        assert server.stats()["requests"] == 3
        (row,) = rows_of(result)
        assert row["status"] == "error" and "gave up after 3 attempts" in row["error"]


def test_timeout_is_retried(exp):
    runs, answers = exp
    with FakeServer(answers=answers, slow_first=1, slow_delay=3) as server:
        start = time.perf_counter()
        result = decode(
            config(runs, server.base_url, concurrency=1, timeout=0.5, protocol={"test": 2})
        )
        assert time.perf_counter() - start < 2.5
        assert result.summary["complete"]
        assert sorted(r["attempts"] for r in rows_of(result)) == [1, 2]


def test_server_dying_mid_run_keeps_answers_and_rerun_finishes(exp):
    runs, answers = exp
    with FakeServer(answers=answers, die_after=5) as server:
        first = decode(config(runs, server.base_url, concurrency=2, max_attempts=2))
        assert not server.alive
    ok = [r for r in rows_of(first) if r["status"] == "ok"]
    assert 1 <= len(ok) <= 5 and first.summary["missing"] == 15 - len(ok)
    assert all("connection failed" in r["error"] for r in rows_of(first) if r["status"] == "error")
    port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
    with FakeServer(answers=answers, port=port) as server:  # restarted at the same URL
        second = decode(config(runs, server.base_url, concurrency=2))
        assert server.stats()["requests"] == 15 - len(ok)
    assert second.summary["complete"] and second.summary["attr_acc"] == 1.0


def test_die_after_never_lets_concurrent_requests_slip_past(exp):
    """`die_after` is an exact bound under concurrency: the server checked the answers given
    and counted a new one only when it was sent, so 8 requests that all cleared the check
    together were all answered (6 of die_after=5 seen in CI)."""
    runs, answers = exp
    with FakeServer(answers=answers, die_after=3, delay=0.1) as server:
        first = decode(config(runs, server.base_url, concurrency=8, max_attempts=1))
        assert not server.alive
    ok = [r for r in rows_of(first) if r["status"] == "ok"]
    assert len(ok) <= 3


def test_concurrency_is_bounded(exp):
    runs, answers = exp
    with FakeServer(answers=answers, delay=0.2) as server:
        start = time.perf_counter()
        decode(config(runs, server.base_url, concurrency=3, protocol={"test": 12}))
        elapsed = time.perf_counter() - start
        assert server.stats()["max_in_flight"] == 3
    assert 0.8 <= elapsed < 2.0  # 12 requests x 0.2 s / 3 in flight


@pytest.mark.parametrize("replicas", [None, 1, 2])
def test_default_concurrency_fills_every_replica_of_the_server(exp, replicas):
    """8 requests in flight per copy of the model the server runs (vLLM's /metrics names one
    engine per --data-parallel-size rank); a server without /metrics counts as one copy."""
    runs, answers = exp
    with FakeServer(answers=answers, delay=1.0, replicas=replicas) as server:
        assert (server_replicas(server.base_url), server_replicas("http://127.0.0.1:9/v1")) == (
            replicas,
            None,
        )
        decode(config(runs, server.base_url, protocol={"test": 15}))
        most = server.stats()["max_in_flight"]
        # one copy: 8 at once; two: 16, so all 15 images could go at once (> 8 however loaded)
        assert most == 8 if replicas in (None, 1) else 8 < most <= 15
        decode(config(runs, server.base_url, concurrency=3, protocol={"test": 6, "seed": 1}))
        assert server.stats()["max_in_flight"] == most  # --concurrency 3: never more


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "think"])
def test_reasoning_is_read_from_every_field(exp, field):
    runs, answers = exp
    with FakeServer(answers=answers, reasoning=field) as server:
        result = decode(config(runs, server.base_url, protocol={"test": 2}))
    assert result.summary["parse_fails"] == 0
    assert all(r["reasoning"].startswith("I looked at") for r in rows_of(result))
    assert all("<think>" not in r["response"] for r in rows_of(result))


def test_api_key_never_written_or_printed(exp):
    runs, answers = exp
    env = {**os.environ, "MY_LLM_KEY": SECRET}
    cli = [sys.executable, "-m", "llm_decode.cli", "decode", "--model", "qwen3.5", "--k", "64"]
    cli += ["--runs", str(runs), "--api-key-env", "MY_LLM_KEY", "--test", "3", "--concurrency", "1"]
    outputs = []
    # the server echoes the Authorization header into its error bodies (a leaky proxy)
    with FakeServer(
        answers=answers, require_key=SECRET, echo_auth=True, status_script=[500, 400]
    ) as server:
        out = subprocess.run(
            [*cli, "--base-url", server.base_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        outputs += [out.stdout, out.stderr]
        assert out.returncode == 1 and "rerun" in out.stderr
        stats = server.stats()
        assert stats["auth_failures"] == 0 and stats["statuses"]["200"] == 2  # the key was sent
    with FakeServer(require_key="another-key", echo_auth=True) as server:
        url = server.base_url.replace("://", f"://user:{SECRET}@")  # credentials in the URL
        out = subprocess.run(
            [*cli, "--base-url", url, "--max-attempts", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        outputs += [out.stdout, out.stderr]
        assert out.returncode == 1 and server.stats()["auth_failures"] == 3
    errors = [r["error"] for p in runs.rglob("results.jsonl") for r in read_jsonl(p) if r["error"]]
    assert any("HTTP 401" in e for e in errors)
    assert any("HTTP 400" in e and "Bearer ***" in e for e in errors)
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    for text in outputs:
        assert SECRET not in text
