"""Model presets: what each model needs to be served and asked (paper Appendix G, model cards).

Design decisions
- A preset carries what the paper varies per model (the served id, whether the reasoning
  suffix is used: DeepSeek-V3.1 and GPT-OSS-120B yes, Qwen3.5 no, and a `max_tokens` large
  enough to finish thinking before the JSON) and what the serving stack needs to honour it:
  the thinking switch as the request's `extra_body` (Qwen3.5 `chat_template_kwargs.
  enable_thinking`, DeepSeek-V3.1 `chat_template_kwargs.thinking`, gpt-oss
  `reasoning_effort`), and the `vllm serve` line that hosts it, with the reasoning parser
  that keeps structured output from starting the grammar at the first (thinking) token.
- The thinking switch is sent both ways (on and off), so a server default never decides.
  gpt-oss cannot stop reasoning: "off" is `reasoning_effort: low`, "on" its default `medium`.
- Sampling: the paper used temperature 0 and so does every preset by default; where a card
  warns against greedy decoding in thinking mode, its recommended sampling is kept in
  `card_sampling` and used only on request (`--card-sampling`); the summary records which.
- Unknown names pass through unchanged as the served id, so any model a server hosts works;
  `--served-id` overrides the id of a preset (a local checkpoint path, a quantised variant).
- The results folder is named after the name the user typed, made filesystem-safe.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

#: Tokens for non-reasoning models: 10 objects of JSON need about 400.
DEFAULT_MAX_TOKENS = 2048
#: Reasoning models think before answering; too small a budget cuts the answer off.
REASONING_MAX_TOKENS = 16384
#: Context for `vllm serve`: 50 shots (~15k tokens) plus a full reasoning budget, with room.
SERVE_MAX_MODEL_LEN = 65536


@dataclass(frozen=True)
class ModelPreset:
    """One model: its served id, thinking switch, sampling advice and serving command."""

    name: str
    served_id: str
    think: bool = False  # paper default: reasoning suffix (and thinking switch) on
    max_tokens: int = DEFAULT_MAX_TOKENS
    #: extra_body for thinking on / off; empty for models without a switch
    think_on: dict[str, Any] = field(default_factory=dict)
    think_off: dict[str, Any] = field(default_factory=dict)
    #: the card's sampling for thinking mode where it warns against greedy decoding
    card_sampling: dict[str, float] = field(default_factory=dict)
    #: output in OpenAI's Harmony format (gpt-oss): "analysis...assistantfinal..."
    harmony: bool = False
    #: `vllm serve` options beyond the model id
    tensor_parallel_size: int = 1
    reasoning_parser: str | None = None
    serve_extra: tuple[str, ...] = ()

    def extra_body(self, think: bool) -> dict[str, Any]:
        """The request fields that switch thinking on or off for this model."""
        return dict(self.think_on if think else self.think_off)

    def chat_template_kwargs(self, think: bool) -> dict[str, Any]:
        """The same switch for vLLM's offline `LLM.chat` (template variables only)."""
        body = self.extra_body(think)
        kwargs = dict(body.get("chat_template_kwargs", {}))
        if "reasoning_effort" in body:  # gpt-oss's chat template reads it as a variable
            kwargs["reasoning_effort"] = body["reasoning_effort"]
        return kwargs

    def serve_args(self) -> list[str]:
        """The `vllm serve` command line (argv) that hosts this preset."""
        args = ["vllm", "serve", self.served_id]
        if self.tensor_parallel_size > 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        args += ["--max-model-len", str(SERVE_MAX_MODEL_LEN)]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        return args + list(self.serve_extra)

    def serve_command(self) -> str:
        return shlex.join(self.serve_args())


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "qwen3.5",
            "Qwen/Qwen3.5-397B-A17B",
            think=False,
            max_tokens=REASONING_MAX_TOKENS,
            think_on={"chat_template_kwargs": {"enable_thinking": True}},
            think_off={"chat_template_kwargs": {"enable_thinking": False}},
            # Qwen cards: "DO NOT use greedy decoding" in thinking mode
            card_sampling={"temperature": 0.6, "top_p": 0.95, "top_k": 20},
            tensor_parallel_size=8,
            reasoning_parser="qwen3",
        ),
        ModelPreset(
            "deepseek-v3.1",
            "deepseek-ai/DeepSeek-V3.1",
            think=True,
            max_tokens=REASONING_MAX_TOKENS,
            think_on={"chat_template_kwargs": {"thinking": True}},
            think_off={"chat_template_kwargs": {"thinking": False}},
            tensor_parallel_size=8,
            reasoning_parser="deepseek_v3",
            serve_extra=("--enable-expert-parallel",),
        ),
        ModelPreset(
            "gpt-oss-120b",
            "openai/gpt-oss-120b",
            think=True,
            max_tokens=REASONING_MAX_TOKENS,
            think_on={"reasoning_effort": "medium"},
            think_off={"reasoning_effort": "low"},
            # gpt-oss card: temperature 1.0, top_p 1.0
            card_sampling={"temperature": 1.0, "top_p": 1.0},
            harmony=True,
            tensor_parallel_size=1,
            reasoning_parser="openai_gptoss",
        ),
    )
}


def describe_presets() -> str:
    """Every preset as text: what is sent, how it samples, and the two-step recipe."""
    blocks = []
    for p in PRESETS.values():
        card = ", ".join(f"{k} {v:g}" for k, v in p.card_sampling.items())
        blocks.append(
            "\n".join(
                [
                    f"{p.name}: {p.served_id}",
                    f"  thinking: {'on' if p.think else 'off'} by default (paper); "
                    f"on sends {json.dumps(p.think_on)}, off sends {json.dumps(p.think_off)}",
                    "  sampling: temperature 0 (paper); "
                    + (f"the card's ({card}) with --card-sampling" if card else "no card advice"),
                    f"  max_tokens: {p.max_tokens}"
                    + ("; output in Harmony format (parsed)" if p.harmony else ""),
                    f"  serve:  {p.serve_command()}",
                    f"  decode: strop-llm decode --model {p.name} --k 128 "
                    "--base-url http://HOST:8000/v1",
                ]
            )
        )
    return "\n\n".join(blocks)


def resolve_model(name: str, served_id: str | None = None) -> ModelPreset:
    """The preset for `name` (or a pass-through preset), with `served_id` overriding its id."""
    preset = PRESETS.get(name.lower(), ModelPreset(name, name))
    return replace(preset, served_id=served_id) if served_id else preset


#: Longest folder name `folder_name` returns: file systems stop at 255 bytes, and the
#: results folder may still get a `-<backend>` and a `-<8 hex>` suffix.
MAX_FOLDER_NAME = 100


def folder_name(name: str) -> str:
    """A filesystem-safe folder name for a model (`org/model` -> `org--model`); a longer name
    is cut and given 8 hex of its hash, so two long names stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-.") or "model"
    if len(safe) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe[: MAX_FOLDER_NAME - 9].rstrip('-.')}-{digest}"
    return safe
