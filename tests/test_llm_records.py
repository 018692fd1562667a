"""What a decode keeps and how its command line is declared (issue 17, items 9 and 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import decode_config as config
from typer.testing import CliRunner

from llm_decode.protocol import ProtocolConfig
from llm_decode.runner import DecodeConfig, decode, plan
from llm_decode.testing.fake_server import FakeServer
from llm_decode.testing.synthetic import make_run
from strop.runs import read_jsonl


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "llm_decode.cli", *args]
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


# --------------------------------------------------------------------------- 9. records


def test_rows_keep_every_answer_and_the_prompt_once_by_hash(exp_dir):
    with FakeServer(invalid_first=1) as server:
        result = decode(config(exp_dir, server.base_url, protocol={"test": 3}))
    rows = read_jsonl(result.folder / "results.jsonl")
    for row in rows:
        assert [a["text"][:10] for a in row["answers"]] == ["Here is th", '{"objects"']
        assert row["response"] == row["answers"][-1]["text"]
    prompts = read_jsonl(result.folder / "prompts.jsonl")
    assert len(prompts) == 3  # one per distinct prompt, not per request
    by_hash = {p["sha256"]: p["messages"] for p in prompts}
    jobs = {j.key: j for j in plan(config(exp_dir, server.base_url, protocol={"test": 3})).jobs}
    for row in rows:
        assert by_hash[row["prompt_sha256"]] == jobs[row["key"]].messages
    with FakeServer() as server:  # a rerun with nothing to send stores nothing again
        decode(config(exp_dir, server.base_url, protocol={"test": 3}))
    assert len(read_jsonl(result.folder / "prompts.jsonl")) == 3


def test_show_prompt_prints_the_first_messages_and_sends_nothing(exp_dir):
    out = cli("decode", "--model", "m", "--k", "64", "--runs", str(exp_dir), "--shots", "4",
              "--base-url", "http://127.0.0.1:9/v1", "--show-prompt")  # fmt: skip
    assert out.returncode == 0, out.stderr
    messages = json.loads(out.stdout)
    expected = (
        plan(config(exp_dir, "http://127.0.0.1:9/v1", protocol={"shots": 4})).jobs[0].messages
    )
    assert messages == expected
    assert not list(exp_dir.rglob("results.jsonl"))


def test_limit_decodes_the_first_images_and_a_full_run_reuses_them(exp_dir):
    with FakeServer() as server:
        limited = decode(config(exp_dir, server.base_url, limit=2, protocol={"test": 6}))
        assert limited.sent == 2 and limited.summary["n"] == 2
        full = decode(config(exp_dir, server.base_url, protocol={"test": 6}))
        assert full.folder == limited.folder and full.sent == 4 and full.summary["n"] == 6


def test_the_sampling_seed_varies_sampling_on_a_fixed_test_set(exp_dir):
    base = plan(config(exp_dir, "http://127.0.0.1:1/v1", protocol={"seed": 3}))
    other = plan(config(exp_dir, "http://127.0.0.1:1/v1", protocol={"seed": 3, "sampling_seed": 9}))
    assert [j.row for j in base.jobs] == [j.row for j in other.jobs]  # the same images
    assert base.selection.shots == other.selection.shots
    assert all(a.key != b.key for a, b in zip(base.jobs, other.jobs, strict=True))
    with FakeServer() as server:
        decode(
            config(exp_dir, server.base_url, protocol={"seed": 3, "sampling_seed": 9, "test": 1})
        )
        assert server.stats()["last_request"]["seed"] == 9


# --------------------------------------------------------------------------- 10. the CLI


def test_every_transport_option_is_declared_once():
    from llm_decode.backends.openai_compat import OpenAIConfig
    from llm_decode.backends.transport import TransportOptions
    from llm_decode.cli import app

    for name in ("timeout", "max_attempts", "long_retries", "stream"):
        ours = DecodeConfig.model_fields[name]
        theirs = TransportOptions.model_fields[name]
        assert ours.default == theirs.default == OpenAIConfig.model_fields[name].default
        assert ours.description == theirs.description
    help_text = " ".join(
        CliRunner().invoke(app, ["decode", "--help"], env={"COLUMNS": "300"}).output.split()
    )
    assert TransportOptions.model_fields["timeout"].description in help_text
    assert ProtocolConfig.model_fields["temperature"].description in help_text
    assert "shots come from its train rows" in help_text


def test_a_missing_template_is_a_usage_error(exp_dir, tmp_path):
    out = cli("decode", "--model", "m", "--k", "64", "--runs", str(exp_dir),
              "--template", str(tmp_path / "nope.j2"))  # fmt: skip
    assert out.returncode == 2 and "nope.j2: template file not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_baselines_show_no_tokens_per_second(exp_dir):
    out = cli("decode", "--backend", "knn", "--k", "64", "--runs", str(exp_dir))
    assert out.returncode == 0, out.stderr
    assert "tok/s" not in out.stderr


def test_required_options_stay_required():
    from llm_decode.cli import app

    result = CliRunner().invoke(app, ["decode", "--backend", "knn"])
    assert result.exit_code == 2 and "Missing option '--k'" in result.output


# --------------------------------------------------------------------------- folder names


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
