"""Long generations over a real HTTP server on 127.0.0.1: streaming, idle limit, deadline.

The fake server's slow-streaming mode stands in for a reasoning model at 50 tokens/s, scaled
down: ~170 tokens take ~3.4 s against an idle limit of 0.5 s (a real run: 16,384 tokens take
330 s against 120 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial

from conftest import decode_config

from llm_decode.backends.base import TransportStats
from llm_decode.runner import decode
from llm_decode.testing.fake_server import FakeServer
from strop.runs import read_jsonl

#: an idle limit of 0.5 s (see the module docstring)
config = partial(decode_config, shots=None, backoff_base=0.05, backoff_cap=0.2, timeout=0.5)


def rows_of(result):
    return read_jsonl(result.folder / "results.jsonl")


SLOW = {"reasoning": "reasoning", "reasoning_tokens": 100, "stream_rate": 50.0}


def test_slow_stream_of_a_long_generation_finishes_without_a_timeout_retry(exp):
    runs, answers = exp
    stats = TransportStats()
    with FakeServer(answers=answers, **SLOW) as server:
        start = time.perf_counter()
        result = decode(
            config(runs, server.base_url, max_tokens=16384, concurrency=2, protocol={"test": 2}),
            stats=stats,
        )
        elapsed = time.perf_counter() - start
        assert server.stats()["requests"] == 2 and server.stats()["streams"] == 2
    assert elapsed > 3 * 0.5  # each answer streamed for several idle limits
    assert result.summary["complete"] and result.summary["attr_acc"] == 1.0
    rows = rows_of(result)
    assert [r["attempts"] for r in rows] == [1, 1] and not any(r["partial"] for r in rows)
    assert all(r["reasoning"].split()[-1] == "step99" for r in rows)  # all of it, not parsed
    assert all(r["usage"]["completion_tokens"] > 100 for r in rows)
    assert stats.retries == 0 and stats.long_timeouts == 0 and stats.in_flight == 0
    assert stats.tokens == sum(r["usage"]["completion_tokens"] for r in rows)


def test_without_streaming_the_same_answer_times_out_and_is_retried_once(exp):
    """The old failure mode, bounded: the idle limit is the whole answer, one retry, no more."""
    runs, answers = exp
    with FakeServer(answers=answers, **SLOW) as server:
        result = decode(
            config(runs, server.base_url, stream=False, max_tokens=16384, protocol={"test": 1})
        )
        assert server.stats()["requests"] == 2  # the first attempt and one long retry, not 5
    (row,) = rows_of(result)
    assert row["status"] == "error" and row["attempts"] == 2
    assert (
        "no answer within 0.5 s (streaming off)" in row["error"] and "not retried" in row["error"]
    )


def test_stall_mid_stream_is_retried_once_with_the_partial_output_kept(exp):
    runs, answers = exp
    with FakeServer(answers=answers, stall_first=2, stall_after=5, slow_delay=2) as server:
        stats = TransportStats()
        failed = decode(config(runs, server.base_url, protocol={"test": 1}), stats=stats)
        assert server.stats()["stalls"] == 2 and server.stats()["requests"] == 2
        (row,) = rows_of(failed)
        assert row["status"] == "error" and row["partial"] and row["attempts"] == 2
        assert "stalled: no data for 0.5 s after 4 tokens" in row["error"]
        assert row["response"].startswith('{"objects":')  # the 4 words that had arrived
        assert stats.long_timeouts == 2 and stats.retries == 1
        # the rerun retries the error row; the server has stopped stalling
        again = decode(config(runs, server.base_url, protocol={"test": 1}))
        assert again.sent == 1 and again.summary["complete"]
    with FakeServer(answers=answers, stall_first=1, stall_after=5, slow_delay=2) as server:
        result = decode(config(runs, server.base_url, model="m2", protocol={"test": 1}))
        (row,) = rows_of(result)
        assert row["status"] == "ok" and row["attempts"] == 2 and not row["partial"]


def test_deadline_stops_a_runaway_request_and_is_not_retried(exp):
    runs, answers = exp
    slow = {**SLOW, "reasoning_tokens": 400}  # 8 s of streaming
    with FakeServer(answers=answers, **slow) as server:
        start = time.perf_counter()
        # deadline = 0.5 s idle + 20 tokens / 20 tokens/s = 1.5 s
        result = decode(
            config(runs, server.base_url, max_tokens=20, min_tokens_per_s=20, protocol={"test": 1})
        )
        elapsed = time.perf_counter() - start
        assert server.stats()["requests"] == 1
    assert elapsed < 4
    (row,) = rows_of(result)
    assert row["status"] == "error" and row["partial"] and "deadline of 1.5 s" in row["error"]
    assert row["reasoning"].startswith("step0 step1") and row["response"] == ""


def test_thinking_switch_and_extra_body_reach_the_server(exp):
    runs, answers = exp
    with FakeServer(answers=answers) as server:
        off = decode(config(runs, server.base_url, model="qwen3.5", protocol={"test": 1}))
        sent = server.stats()["last_request"]
        assert sent["chat_template_kwargs"] == {"enable_thinking": False} and sent["stream"]
        assert sent["stream_options"] == {"include_usage": True}
        on = decode(
            config(
                runs,
                server.base_url,
                model="qwen3.5",
                think=True,
                extra_body={"top_k": 5, "mm_processor_kwargs": {"a": 1}},
                protocol={"test": 1},
            )
        )
        sent = server.stats()["last_request"]
        assert sent["chat_template_kwargs"] == {"enable_thinking": True}
        assert sent["top_k"] == 5 and sent["mm_processor_kwargs"] == {"a": 1}
        decode(config(runs, server.base_url, model="gpt-oss-120b", protocol={"test": 1}))
        assert server.stats()["last_request"]["reasoning_effort"] == "medium"
        card = decode(
            config(runs, server.base_url, model="qwen3.5", card_sampling=True, protocol={"test": 1})
        )
        sent = server.stats()["last_request"]
        # the card's non-thinking row (qwen3.5 runs with thinking off, as in the paper)
        assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.7, 0.8, 20)
        assert sent["presence_penalty"] == 1.5
    assert off.summary["protocol"]["extra_body"] == {
        "chat_template_kwargs": {"enable_thinking": False}
    }
    assert off.summary["protocol"]["sampling_source"].startswith("protocol")
    assert card.summary["protocol"]["sampling"] == {
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "presence_penalty": 1.5,
    }
    assert card.summary["protocol"]["sampling_source"].startswith("model card")
    # the switch changes answers, so it is part of the key and of the protocol: nothing was
    # reused between them, and each keeps its own results folder
    assert on.sent == 1 and len({r["key"] for x in (off, on, card) for r in rows_of(x)}) == 3
    assert len({off.folder, on.folder, card.folder}) == 3


def test_base_url_and_key_come_from_the_environment_unless_overridden(exp):
    runs, answers = exp
    key = "sk-env-key-123"
    cli = [sys.executable, "-m", "llm_decode.cli", "decode", "--model", "m", "--k", "64"]
    cli += ["--runs", str(runs), "--test", "2", "--timeout", "5"]
    with FakeServer(answers=answers, require_key=key) as server:
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": key}
        out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert server.stats()["requests"] == 2 and server.stats()["auth_failures"] == 0
        # --base-url wins over the environment: nothing reaches this server
        bad = [
            *cli,
            "--model",
            "other",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--max-attempts",
            "1",
        ]
        out = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode != 0 and "connection failed" in out.stderr
        assert server.stats()["requests"] == 2


def test_bad_extra_body_is_one_line(exp):
    from typer.testing import CliRunner

    from llm_decode.cli import app

    runs, _ = exp
    base = ["decode", "--model", "m", "--k", "64", "--runs", str(runs)]
    for text, expected in (("{oops", "--extra-body: not JSON"), ("[1]", "expected a JSON object")):
        result = CliRunner().invoke(app, [*base, "--extra-body", text])
        assert result.exit_code == 2 and expected in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_progress_says_what_the_run_waits_for():
    from llm_decode.cli import _DecodeProgress

    progress = _DecodeProgress("m")
    progress.stats.in_flight = 3
    assert "waiting: server to send tokens (3 requests open)" in progress.live_text()
    progress.stats.last_token_at = time.monotonic()
    progress.stats.tokens = 500
    text = progress.live_text()
    assert "in flight 3" in text and "tok/s" in text and "waiting" not in text
    progress.stats.waiting = "rate limit: the server asked to wait 30 s"
    progress.stats.retries, progress.stats.long_timeouts = 2, 1
    text = progress.live_text()
    assert "waiting: rate limit" in text and "retries 2 long timeouts 1" in text


def test_structured_thinking_without_reasoning_is_warned(exp):
    runs, answers = exp
    cfg = {"model": "deepseek-v3.1", "structured": True, "protocol": {"test": 2}}
    with FakeServer(answers=answers) as server:  # no reasoning parser: no reasoning back
        quiet = decode(config(runs, server.base_url, **cfg))
    (warning,) = quiet.warnings
    assert "none of 2 answers carried reasoning" in warning
    assert "--reasoning-parser deepseek_v3" in warning and "\n" not in warning
    with FakeServer(answers=answers, reasoning="reasoning") as server:
        cfg["protocol"] = {"test": 2, "seed": 1}  # new keys: asked again, not read back
        assert decode(config(runs, server.base_url, **cfg)).warnings == []
        assert (
            decode(config(runs, server.base_url, model="qwen3.5", structured=True)).warnings == []
        )
