"""strop-llm decode against hostile servers, answers and files (issue 17, items 1-8).

Every case is a real scripted HTTP server on 127.0.0.1 (`FakeServer`), real result files and,
where the command line matters, a real `strop-llm` process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import decode_config as config

from llm_decode.protocol import ProtocolConfig
from llm_decode.runner import DecodeConfig, decode, plan
from llm_decode.testing.fake_server import FakeServer, derived_scene
from llm_decode.testing.synthetic import make_run
from llm_decode.testing.transformers_server import free_port
from strop.runs import Programs, RunFolderError, read_jsonl, read_programs
from strop.runs import write_programs as write_table

FINAL = ("ok", "parse_fail")


def rows_of(result):
    return read_jsonl(result.folder / "results.jsonl")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llm_decode.cli", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


# --------------------------------------------------------------------------- 1. repair turn


def test_a_repair_turn_that_overflows_the_context_ends_as_a_parse_failure(exp_dir):
    """The 400 used to turn the row into a transport error that every rerun repeated."""
    probe = plan(config(exp_dir, "http://127.0.0.1:1/v1", max_tokens=20, protocol={"test": 2}))
    longest = max(sum(len(m["content"].split()) for m in j.messages) for j in probe.jobs)
    limit = longest + 20  # the first turn fits; the repair (answer + request) cannot
    with FakeServer(invalid_first=5, context_limit=limit) as server:
        args = ["decode", "--model", "m", "--k", "64", "--runs", str(exp_dir), "--shots", "5"]
        args += ["--test", "2", "--max-tokens", "20", "--base-url", server.base_url]
        out = cli(*args)
        assert out.returncode == 0, out.stderr
        stats = server.stats()
    rows = [r for p in exp_dir.rglob("results.jsonl") for r in read_jsonl(p)]
    assert [r["status"] for r in rows] == ["parse_fail", "parse_fail"]
    for row in rows:
        assert "answer is not JSON" in row["error"]
        assert "takes at most" in row["error"]  # the server's detail, kept
    assert stats["statuses"]["400"] == 2
    summary = json.loads(next(exp_dir.rglob("summary.json")).read_text())
    assert summary["complete"] and summary["parse_fails"] == 2


def test_the_echoed_answer_in_a_repair_turn_is_truncated(exp_dir):
    with FakeServer(invalid_first=1, pad_answer=200_000) as server:
        result = decode(config(exp_dir, server.base_url, max_tokens=50, protocol={"test": 1}))
        bodies = server.stats()["bodies"]
    assert len(bodies) == 2
    assert bodies[1]["chars"] - bodies[0]["chars"] < 20_000  # not 200,000 characters back
    assert result.summary["complete"]


def test_a_refused_request_says_the_server_detail_and_no_rerun_is_suggested(exp_dir):
    with FakeServer(context_limit=10) as server:
        args = ["decode", "--model", "m", "--k", "64", "--runs", str(exp_dir), "--shots", "5"]
        out = cli(*args, "--test", "2", "--base-url", server.base_url)
    assert out.returncode == 1
    assert "takes at most 10 tokens" in out.stderr
    assert "rerun the same command" not in out.stderr


# --------------------------------------------------------------------------- 2. cut streams


@pytest.mark.parametrize("mode", ["clean", "mid_event"])
def test_a_stream_cut_short_is_a_transport_failure_and_retried(exp_dir, mode):
    port = free_port()
    with FakeServer(cut_first=1, cut_mode=mode) as server:
        result = decode(config(exp_dir, server.base_url, concurrency=1, protocol={"test": 2}))
        assert server.stats()["cuts"] == 1
    rows = rows_of(result)
    assert [r["status"] for r in rows] == ["ok", "ok"] and rows[0]["attempts"] == 2
    with FakeServer(port, cut_first=100, cut_mode=mode) as server:
        result = decode(config(exp_dir, server.base_url, model="m2", protocol={"test": 2}))
    assert result.summary["missing"] == 2 and not result.summary["complete"]
    assert all(r["status"] == "error" for r in rows_of(result))
    assert all("finish" in r["error"] for r in rows_of(result))
    with FakeServer(port) as server:  # a healthy server: both are sent again
        again = decode(config(exp_dir, server.base_url, model="m2", protocol={"test": 2}))
        assert server.stats()["requests"] == 2
    assert again.summary["complete"] and again.summary["parse_fails"] == 0


# --------------------------------------------------------------------------- 3. wrong types


@pytest.mark.parametrize("kind", ["usage_list", "content_int", "choices_object"])
@pytest.mark.parametrize("stream", [True, False])
def test_a_200_with_wrong_field_types_is_one_bad_row(exp_dir, kind, stream):
    port = free_port()
    with FakeServer(port, bad_types_first=1, bad_types=kind) as server:
        cfg = config(
            exp_dir,
            server.base_url,
            max_attempts=1,
            concurrency=1,
            stream=stream,
            protocol={"test": 3},
        )
        result = decode(cfg)
    rows = rows_of(result)
    assert [r["status"] for r in rows] == ["error", "ok", "ok"]
    assert "malformed response" in rows[0]["error"]
    assert result.summary["missing"] == 1
    with FakeServer(port) as server:  # healthy, on the same address
        decode(cfg)
        assert server.stats()["requests"] == 1  # only the bad one again


# --------------------------------------------------------------------------- 4. huge answers


def test_a_huge_coordinate_is_scored_not_fatal(exp_dir):
    probe = plan(config(exp_dir, "http://127.0.0.1:1/v1", protocol={"test": 2}))
    answers = {}
    for job in probe.jobs:
        scene = derived_scene(job.codes)
        scene["objects"][0]["x"] = 1e308
        answers[" ".join(map(str, job.codes))] = scene
    with FakeServer(answers=answers) as server:
        result = decode(config(exp_dir, server.base_url, protocol={"test": 2}))
    s = result.summary
    assert s["complete"] and s["parse_fails"] == 0
    assert 0 < s["pos_mse"] < 36 and 0 < s["pos_mae"] < 6 * 2**0.5  # clipped to the ground


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_longer_than_max_tokens_allows_is_cut(exp_dir, stream):
    with FakeServer(pad_answer=2_000_000) as server:
        cfg = config(exp_dir, server.base_url, max_tokens=50, stream=stream, protocol={"test": 1})
        result = decode(cfg)
    (row,) = rows_of(result)
    assert row["status"] in FINAL and len(row["response"]) <= 65536  # of 2,000,000
    assert row["finish_reason"] == "length"


# --------------------------------------------------------------------------- 5. torn rows


def test_a_torn_last_row_is_repaired_before_appending(exp_dir):
    with FakeServer() as server:
        cfg = config(exp_dir, server.base_url, protocol={"test": 4})
        first = decode(cfg)
        path = first.folder / "results.jsonl"
        text = path.read_text()
        path.write_text(text[: len(text) - 40])  # the last row torn mid-write
        second = decode(cfg)
        assert second.sent == 1 and second.summary["complete"]
        lines = path.read_text().splitlines()
        assert all(json.loads(line) for line in lines)  # nothing glued onto the fragment
        third = decode(cfg)
        assert third.sent == 0 and server.stats()["requests"] == 5


def test_a_glued_row_in_the_middle_is_skipped_with_a_warning(exp_dir):
    with FakeServer() as server:
        cfg = config(exp_dir, server.base_url, protocol={"test": 3})
        path = decode(cfg).folder / "results.jsonl"
        lines = path.read_text().splitlines()
        lines[1] = lines[1][:30] + lines[1]  # what an older version left behind
        path.write_text("\n".join(lines) + "\n")
        again = decode(cfg)
    assert again.sent == 1 and again.summary["complete"]
    assert any("line 2" in w for w in again.warnings)


# --------------------------------------------------------------------------- 6. secrets

SECRET = "sk-live-0123456789SECRETabcdef"
QUERY_SECRET = "qk-9876543210QUERYSECRET"


def test_no_key_reaches_disk_or_output_in_any_form(exp_dir):
    """A CRLF key file and a key in the URL's query string both used to land on disk."""
    outputs = []
    with FakeServer(require_key=SECRET, echo_auth=True, status_script=[500, 400]) as server:
        url = f"{server.base_url}?api-key={QUERY_SECRET}"
        args = ["decode", "--model", "m", "--k", "64", "--runs", str(exp_dir), "--shots", "5"]
        args += ["--test", "3", "--concurrency", "1", "--api-key-env", "MY_KEY"]
        out = cli(*args, "--base-url", url, env={"MY_KEY": SECRET + "\r\n"})
        outputs += [out.stdout, out.stderr]
        assert out.returncode == 1, out.stderr
        assert server.stats()["auth_failures"] == 0  # the stripped key was accepted
    with FakeServer(require_key="another", echo_auth=True) as server:
        out = cli(*args, "--base-url", server.base_url, env={"MY_KEY": SECRET + "\r"})
        outputs += [out.stdout, out.stderr]
        assert out.returncode == 1
    files = [p for p in exp_dir.rglob("*") if p.is_file()]
    assert any(p.name == "identity.json" for p in files)
    for secret in (SECRET, QUERY_SECRET, SECRET[:20]):
        for path in files:
            assert secret.encode() not in path.read_bytes(), path
        for text in outputs:
            assert secret not in text and secret not in text.replace("\n", "")


def test_redact_covers_escaped_quoted_and_header_forms():
    from llm_decode.backends.base import redact

    key = 'k3y"with/special+chars\r'
    text = (
        json.dumps({"auth": f"Bearer {key}"})
        + repr(key)
        + " https://h/v1?api-key=abc%2Bdef&x=1"
        + " Authorization: Bearer other-token"
    )
    out = redact(text, [key])
    assert 'k3y"with' not in out and "k3y\\" not in out and "special" not in out
    assert "abc%2Bdef" not in out and "x=1" in out and "other-token" not in out


# --------------------------------------------------------------------------- 7. leakage


def test_duplicated_image_ids_are_refused_by_decode(tmp_path):
    src = read_programs(make_run(tmp_path / "src", k=64, n_train=60, n_val=20))
    rows = list(range(len(src.image_id))) + [61, 62]  # two val images listed twice
    table = Programs(
        codes=[src.codes[i] for i in rows],
        image_id=[src.image_id[i] for i in rows],
        split=[src.split[i] if i < 80 else "train" for i in rows],
        n_objects=src.n_objects[rows],
        scene=[src.scene[i] for i in rows],
        codebook_size=64,
    )
    write_table(tmp_path / "exp" / "k64" / "programs.parquet", table)
    with pytest.raises(RunFolderError) as err:
        decode(DecodeConfig(model="knn", backend="knn", k=64, runs=tmp_path / "exp"))
    assert src.image_id[61] in str(err.value) and src.image_id[62] in str(err.value)
    assert "2 image ids" in str(err.value)


def test_export_refuses_a_split_named_twice(tmp_path):
    from strop.evaluation.export import export_programs

    with pytest.raises(ValueError, match="val.*twice"):
        export_programs(tmp_path / "no-run", split="val,val")


# --------------------------------------------------------------------------- 8. protocols


def test_each_protocol_keeps_its_own_results(exp_dir):
    def knn(shots, **extra):
        cfg = DecodeConfig(
            model="knn", backend="knn", k=64, runs=exp_dir, protocol=ProtocolConfig(shots=shots)
        )
        return decode(cfg.model_copy(update=extra))

    fifty = knn(50)
    summary = (fifty.folder / "summary.json").read_text()
    ten = knn(10)
    assert ten.folder != fifty.folder and ten.sent == 15
    assert (fifty.folder / "summary.json").read_text() == summary  # untouched
    assert len(read_jsonl(fifty.folder / "results.jsonl")) == 15
    assert knn(50).sent == 0 and knn(10).sent == 0  # each resumes its own
    from llm_decode.scoring import ScoringOptions

    other = knn(50, scoring=ScoringOptions(matching="position"))
    assert other.folder not in (ten.folder, fifty.folder)

    from llm_decode.report import COLUMNS, build_report

    path, _ = build_report(exp_dir)
    text = path.read_text()
    for column in ("n", "Shots", "Thinking", "Temperature", "Scoring"):
        assert column in COLUMNS
    assert "| 50 |" in text and "| 10 |" in text
