"""Presets as the hardware and the model cards allow (issue 17, item 11)."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from llm_decode.cli import app
from llm_decode.presets import PRESETS, Hardware, resolve_model
from llm_decode.protocol import ProtocolConfig
from llm_decode.runner import DecodeConfig, decode
from llm_decode.testing.fake_server import FakeServer
from strop.runs import read_jsonl


def run(exp_dir, url, **overrides):
    cfg = DecodeConfig(
        k=64,
        runs=exp_dir,
        base_url=url,
        timeout=5,
        protocol=ProtocolConfig(shots=5, test=1),
        **{"model": "qwen3.5", **overrides},
    )
    return decode(cfg)


def test_qwen_card_sampling_follows_the_thinking_mode(exp_dir):
    with FakeServer() as server:
        run(exp_dir, server.base_url, card_sampling=True, think=False)
        off = server.stats()["last_request"]
        run(exp_dir, server.base_url, card_sampling=True, think=True)
        on = server.stats()["last_request"]
    fields = ("temperature", "top_p", "top_k", "presence_penalty")
    assert tuple(off[f] for f in fields) == (0.7, 0.8, 20, 1.5)
    assert tuple(on[f] for f in fields) == (1.0, 0.95, 20, 1.5)
    assert on["max_tokens"] == 32768 and off["max_tokens"] == 16384  # the card's budget


def presets_output(*args: str) -> str:
    result = CliRunner().invoke(app, ["presets", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


def block(output: str, name: str) -> str:
    return next(b for b in output.split("\n\n") if b.startswith(f"{name}:"))


def test_presets_print_the_line_for_the_users_hardware():
    h100 = presets_output("--gpus", "8xH100")
    qwen = block(h100, "qwen3.5")
    assert "vllm serve Qwen/Qwen3.5-397B-A17B-FP8 --tensor-parallel-size 8" in qwen
    assert "--served-id Qwen/Qwen3.5-397B-A17B-FP8" in qwen and "two nodes" in qwen
    assert "does not fit 8xH100" in block(h100, "deepseek-v3.1")
    gpt = block(h100, "gpt-oss-120b")
    assert "--gpu-memory-utilization 0.95 --max-num-batched-tokens 1024" in gpt
    h200 = presets_output("--gpus", "8xh200")
    qwen = block(h200, "qwen3.5")
    argv = shlex.split(qwen.split("serve on 8xH200: ")[1].splitlines()[0])
    assert argv[2] == "Qwen/Qwen3.5-397B-A17B" and "--enable-prefix-caching" in argv
    assert "--tensor-parallel-size" in argv and "FP8" not in " ".join(argv)
    assert "--served-id" not in qwen.split("decode:")[1]  # BF16 served: no FP8 id to name
    assert "vllm serve deepseek-ai/DeepSeek-V3.1 --tensor-parallel-size 8" in h200
    assert "max-num-batched-tokens" not in block(h200, "gpt-oss-120b")
    assert "serve on 8xH100" in presets_output() and "serve on 8xH200" in presets_output()
    bad = CliRunner().invoke(app, ["presets", "--gpus", "eight"])
    assert bad.exit_code == 2 and "expected NxH100 or NxH200" in bad.output


def serve_lines(gpus: str, name: str) -> tuple[str, str]:
    """The `serve on` command for `gpus`, and the notes under it."""
    text = block(presets_output("--gpus", gpus), name)
    after = text.split(f"serve on {Hardware.parse(gpus).name}: ")[1].splitlines()
    notes = [line.strip() for line in after[1:] if line.startswith("    (")]
    return after[0], " ".join(notes)


def test_a_node_with_room_for_several_copies_serves_them_data_parallel():
    tail = "--max-model-len 65536 --reasoning-parser openai_gptoss --enable-prefix-caching"
    h100 = "--gpu-memory-utilization 0.95 --max-num-batched-tokens 1024"  # the recipe's tp 1
    one, note = serve_lines("1xH100", "gpt-oss-120b")
    assert one == f"vllm serve openai/gpt-oss-120b {tail} {h100}" and "in flight" not in note
    eight, note = serve_lines("8xH100", "gpt-oss-120b")
    assert eight == f"vllm serve openai/gpt-oss-120b --data-parallel-size 8 {tail} {h100}"
    assert "8 copies" in note and "keeps 64 requests in flight" in note
    assert serve_lines("8xH200", "gpt-oss-120b")[0] == (
        f"vllm serve openai/gpt-oss-120b --data-parallel-size 8 {tail}"
    )
    assert serve_lines("2xH200", "gpt-oss-120b")[0].startswith(
        "vllm serve openai/gpt-oss-120b --data-parallel-size 2 "
    )
    assert serve_lines("1xH200", "gpt-oss-120b")[0] == f"vllm serve openai/gpt-oss-120b {tail}"
    # a model that takes the whole node is one copy
    qwen, note = serve_lines("8xH200", "qwen3.5")
    assert "--tensor-parallel-size 8" in qwen and "--data-parallel-size" not in qwen
    assert "--data-parallel-size 8 --enable-expert-parallel --language-model-only" in note


def test_every_served_preset_enables_prefix_caching():
    for preset in PRESETS.values():
        if not preset.reasoning_api:
            assert "--enable-prefix-caching" in preset.serve_args()
            assert preset.serve_line(Hardware(8, "H200")).command == preset.serve_command()


@pytest.mark.parametrize("model", ["gpt-5", "gpt-5-mini", "o3"])
def test_openai_reasoning_models_get_max_completion_tokens_and_no_temperature(exp_dir, model):
    assert (
        resolve_model(model).reasoning_api and not resolve_model("gpt-5-chat-latest").reasoning_api
    )
    with FakeServer(reject_legacy_sampling=True) as server:
        result = run(exp_dir, server.base_url, model=model, max_tokens=300)
        sent = server.stats()["last_request"]
    assert result.summary["complete"] and result.summary["parse_fails"] == 0
    assert sent["max_completion_tokens"] == 300
    assert "max_tokens" not in sent and "temperature" not in sent and "seed" not in sent
    assert result.summary["protocol"]["sampling_source"].startswith("the model's default")


def test_the_fake_server_answers_openais_exact_400(exp_dir):
    with FakeServer(reject_legacy_sampling=True) as server:
        result = run(exp_dir, server.base_url, model="gpt-4.1", max_attempts=1)
    (row,) = read_jsonl(result.folder / "results.jsonl")
    assert row["status"] == "error" and row["retryable"] is False
    assert (
        "HTTP 400: Unsupported parameter: 'max_tokens' is not supported with this model. "
        in (row["error"])
    )
