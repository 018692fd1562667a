"""Presets, Harmony parsing and the vLLM offline backend (with a stand-in engine: vLLM itself
cannot be installed on a CPU-only test machine)."""

from __future__ import annotations

import json
import shlex
from types import SimpleNamespace

import pytest

from llm_decode.backends.base import BackendError
from llm_decode.backends.vllm_offline import VLLMBackend, VLLMEngineOptions
from llm_decode.presets import PRESETS, describe_presets, resolve_model
from llm_decode.protocol import ProtocolConfig
from llm_decode.reasoning import split_harmony, split_output
from llm_decode.runner import DecodeConfig, decode, engine_options
from llm_decode.testing.fake_chat import query_codes
from strop.runs import read_jsonl

#: the reasoning parsers vLLM ships for these models (docs.vllm.ai, "Reasoning Outputs")
VLLM_REASONING_PARSERS = {"qwen3", "deepseek_v3", "openai_gptoss", "deepseek_r1"}


SERVED = sorted(n for n, p in PRESETS.items() if not p.reasoning_api)  # hosted by vLLM


@pytest.mark.parametrize("name", SERVED)
def test_every_preset_has_a_complete_serve_line(name):
    preset = PRESETS[name]
    argv = shlex.split(preset.serve_command())
    assert argv[:3] == ["vllm", "serve", preset.served_id]
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--reasoning-parser"] in VLLM_REASONING_PARSERS
    assert int(flags.get("--tensor-parallel-size", "1")) == preset.tensor_parallel_size
    assert int(flags["--max-model-len"]) >= preset.max_tokens + 20000  # 50 shots + answer
    assert all(a.startswith("--") for a in argv[3::2])
    # the thinking switch is sent both ways, and differs
    assert preset.extra_body(True) != preset.extra_body(False)
    assert preset.name in describe_presets() and preset.serve_command() in describe_presets()


def test_thinking_switches_per_model():
    qwen, deepseek, gpt = (resolve_model(n) for n in ("qwen3.5", "deepseek-v3.1", "gpt-oss-120b"))
    assert qwen.extra_body(False) == {"chat_template_kwargs": {"enable_thinking": False}}
    assert deepseek.extra_body(True) == {"chat_template_kwargs": {"thinking": True}}
    assert gpt.extra_body(True) == {"reasoning_effort": "medium"}
    # offline: the same switch as chat template variables
    assert gpt.chat_template_kwargs(False) == {"reasoning_effort": "low"}
    assert deepseek.chat_template_kwargs(True) == {"thinking": True}
    assert resolve_model("my/model").extra_body(True) == {}


def test_cli_presets_prints_every_serve_line():
    from typer.testing import CliRunner

    from llm_decode.cli import app

    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0
    for name in SERVED:
        assert PRESETS[name].serve_command() in result.output


def test_harmony_both_shapes_and_cut_off():
    tokens = (
        "<|channel|>analysis<|message|>Count the codes.<|end|>"
        '<|start|>assistant<|channel|>final<|message|>{"objects": []}<|return|>'
    )
    assert split_harmony(tokens) == ('{"objects": []}', "Count the codes.")
    flat = 'analysisCount the codes, then answer.assistantfinal{"objects": []}'
    assert split_output(flat, harmony=True) == ('{"objects": []}', "Count the codes, then answer.")
    # cut off while still reasoning: no answer at all, never the reasoning as the answer
    assert split_output("analysisStill counting the", harmony=True) == ("", "Still counting the")
    # only Harmony models get the flattened reading; the tokenised shape is always read
    assert split_output('analysis: {"objects": []}') == ('analysis: {"objects": []}', "")
    assert split_output(tokens)[0] == '{"objects": []}'
    assert split_output("<think>hm</think>\n{}") == ("{}", "hm")


def test_engine_options_default_to_the_preset_and_map_to_llm_kwargs():
    qwen = resolve_model("qwen3.5")
    options = engine_options(VLLMEngineOptions(), qwen)
    assert options.tensor_parallel_size == 8 and options.reasoning_parser == "qwen3"
    given = engine_options(
        VLLMEngineOptions(tensor_parallel_size=4, max_model_len=32768, trust_remote_code=True),
        qwen,
    )
    assert given.llm_kwargs() == {
        "tensor_parallel_size": 4,
        "gpu_memory_utilization": 0.9,
        "trust_remote_code": True,
        "max_model_len": 32768,
        "reasoning_parser": "qwen3",
    }
    plain = engine_options(VLLMEngineOptions(), resolve_model("my/model")).llm_kwargs()
    assert "reasoning_parser" not in plain and plain["tensor_parallel_size"] == 1


class StandInLLM:
    """`vllm.LLM.chat`'s signature and output shape; answers in Harmony, fails on call N."""

    def __init__(self, answers: dict[str, object], fail_on_call: int | None = None) -> None:
        self.answers = answers
        self.fail_on_call = fail_on_call
        self.calls: list[dict] = []

    def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template_kwargs=None):
        self.calls.append({"n": len(messages), "kwargs": chat_template_kwargs})
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("CUDA error: an illegal memory access was encountered\n(details)")
        outputs = []
        for conversation in messages:
            codes = query_codes(conversation)
            scene = json.dumps(self.answers[" ".join(map(str, codes))])
            text = f"analysisThe codes say {len(codes)} things.assistantfinal{scene}"
            first = SimpleNamespace(text=text, token_ids=list(range(40)), finish_reason="stop")
            outputs.append(SimpleNamespace(outputs=[first], prompt_token_ids=list(range(900))))
        return outputs


def _offline(engine, batch_size=4):
    gpt = resolve_model("gpt-oss-120b")
    return VLLMBackend(
        engine,
        None,
        endpoint="vllm-offline:openai/gpt-oss-120b",
        chat_template_kwargs=gpt.chat_template_kwargs(True),
        harmony=True,
        batch_size=batch_size,
    )


def test_offline_rows_per_batch_engine_error_is_one_line_and_rerun_resumes(exp):
    runs, answers = exp
    cfg = DecodeConfig(
        model="gpt-oss-120b", k=64, runs=runs, backend="vllm", protocol=ProtocolConfig(test=10)
    )
    engine = StandInLLM(answers, fail_on_call=3)
    with pytest.raises(BackendError) as info:
        decode(cfg, backend=_offline(engine))
    message = str(info.value)
    assert "\n" not in message and "requests 9-10 of 10" in message
    assert "RuntimeError: CUDA error" in message and "8 answers saved" in message
    folder = runs / "k64" / "llm" / "gpt-oss-120b"
    rows = read_jsonl(folder / "results.jsonl")
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)  # batches 1 and 2
    assert [c["n"] for c in engine.calls] == [4, 4, 2]
    assert engine.calls[0]["kwargs"] == {"reasoning_effort": "medium"}
    assert all(r["reasoning"] == f"The codes say {len(r['codes'])} things." for r in rows)
    assert rows[0]["usage"] == {"prompt_tokens": 900, "completion_tokens": 40}

    healthy = StandInLLM(answers)
    result = decode(cfg, backend=_offline(healthy))
    assert result.sent == 2 and [c["n"] for c in healthy.calls] == [2]
    assert result.summary["complete"] and result.summary["attr_acc"] == 1.0


def test_offline_parse_retry_is_one_more_engine_call(exp):
    runs, answers = exp
    cfg = DecodeConfig(model="m", k=64, runs=runs, backend="vllm", protocol=ProtocolConfig(test=3))

    class Garbage(StandInLLM):
        def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template_kwargs=None):
            outs = super().chat(messages, sampling_params, use_tqdm, chat_template_kwargs)
            for out in outs:
                out.outputs[0].text = "not a scene"
            return outs

    engine = Garbage(answers)
    result = decode(cfg, backend=_offline(engine, batch_size=64))
    assert [c["n"] for c in engine.calls] == [3, 3]
    rows = read_jsonl(result.folder / "results.jsonl")
    assert all(r["status"] == "parse_fail" and r["parse_attempts"] == 2 for r in rows)


def test_readme_recipe_matches_every_preset():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in SERVED:
        assert PRESETS[name].serve_command() in readme, name
        assert f"strop-llm decode --model {name} " in readme, name
