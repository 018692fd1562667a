"""Model presets: what each model needs to be served and asked (paper Appendix G, model cards).

Design decisions
- A preset carries what the paper varies per model (the served id, whether the reasoning
  suffix is used: DeepSeek-V3.1 and GPT-OSS-120B yes, Qwen3.5 no, and a `max_tokens` large
  enough to finish thinking before the JSON) and what the serving stack needs to honour it:
  the thinking switch as the request's `extra_body` (Qwen3.5 `chat_template_kwargs.
  enable_thinking`, DeepSeek-V3.1 `chat_template_kwargs.thinking`, gpt-oss
  `reasoning_effort`), and the `vllm serve` line that hosts it on the user's hardware, with
  the reasoning parser that keeps structured output from starting the grammar at the first
  (thinking) token.
- The thinking switch is sent both ways (on and off), so a server default never decides.
  gpt-oss cannot stop reasoning: "off" is `reasoning_effort: low`, "on" its default `medium`.
- Sampling: the paper used temperature 0 and so does every preset by default; a card's
  recommended sampling is kept per thinking mode and used only on request
  (`--card-sampling`), for the mode the run uses; the summary records which.
- Every serve line enables prefix caching explicitly: all queries of a run share the 50-shot
  context (~15k tokens), which a server with the cache computes once.
- Serve lines depend on the hardware (`strop-llm presets --gpus 8xH100`): a line is only
  printed where the recipe says it fits, else what to do instead. Where a node has room for
  several copies of a model (its GPUs a multiple of the recipe's tensor parallel size), the
  line serves them all with `--data-parallel-size`: gpt-oss-120b is 8 copies on 8 GPUs.
- Models are added only where their model card (and a vLLM recipe) can be cited here.
  Qwen3.6-35B-A3B (in the same vLLM recipe) is not a preset: its card's sampling and
  thinking budget were not available to check.
- OpenAI-hosted reasoning models (GPT-5 family, o1/o3/o4) reject `max_tokens` and any
  temperature but the default: their requests carry `max_completion_tokens` and no
  temperature or seed (`reasoning_api`).
- Unknown names pass through unchanged as the served id, so any model a server hosts works;
  `--served-id` overrides the id of a preset (a local checkpoint path, a quantised variant).
- The results folder is named after the name the user typed, made filesystem-safe.

Facts checked (December 2026) against:
- Qwen3.5 model cards (the Qwen3.5 family's "Best Practices", e.g. Qwen/Qwen3.5-35B-A3B as
  quoted verbatim by fakoli.github.io/anvil-serving): thinking, general: temperature 1.0,
  top_p 0.95, top_k 20, presence_penalty 1.5; non-thinking, general: 0.7, 0.8, 20, 1.5;
  output length 32,768 tokens for most queries.
- vLLM recipe for Qwen/Qwen3.5-397B-A17B (recipes.vllm.ai; rechecked at
  https://github.com/vllm-project/recipes/blob/main/Qwen/Qwen3.5.md, commit 8959cf6):
  `--tensor-parallel-size 8 --reasoning-parser qwen3 --enable-prefix-caching`, verified on
  8x H200; the official FP8 checkpoint Qwen/Qwen3.5-397B-A17B-FP8 recommended, and for
  text-only throughput served as `-dp 8 --enable-expert-parallel --language-model-only`
  (`serve_note`). SGLang's Qwen3.5 cookbook: BF16 weights need ~800 GB; H100 (80 GB)
  needs TP 16 (two nodes), H200 runs TP 8.
- vLLM recipe for DeepSeek-V3.1 (vllm-project/recipes DeepSeek/DeepSeek-V3_1.md): served on
  8x H200 (141 GB each) with `--enable-expert-parallel --tensor-parallel-size 8`; its FP8
  weights (~685 GB) exceed one 8x H100 node (640 GB).
- vLLM recipe for gpt-oss (https://github.com/vllm-project/recipes/blob/main/OpenAI/GPT-OSS.md,
  commit 8959cf6): launched with `--tensor-parallel-size 1`, "Set this to 1 to achieve the
  best throughput per GPU"; "Known Limitations": on H100 at tensor parallel size 1 the
  defaults run out of memory; `--gpu-memory-utilization 0.95 --max-num-batched-tokens 1024`
  is the recipe's line. So one H100 serves it, and a node serves one copy per GPU.
- Data parallel serving (https://docs.vllm.ai/en/latest/serving/data_parallel_deployment/):
  `--data-parallel-size N` runs N copies of the model (each over `--tensor-parallel-size`
  GPUs) behind one endpoint; `strop-llm decode` counts them from the server's `/metrics`
  (`llm_decode.backends.replicas`) and keeps `PER_REPLICA_CONCURRENCY` requests in flight
  per copy.
- OpenAI API 400s for GPT-5 reasoning models (as reported verbatim in public issues, e.g.
  griptape-ai/ComfyUI-Griptape#312): "Unsupported parameter: 'max_tokens' is not supported
  with this model. Use 'max_completion_tokens' instead." and "Unsupported value:
  'temperature' does not support ... Only the default (1) value is supported."
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

#: Tokens for non-reasoning models: 10 objects of JSON need about 400.
DEFAULT_MAX_TOKENS = 2048
#: Reasoning models think before answering; too small a budget cuts the answer off.
REASONING_MAX_TOKENS = 16384
#: Qwen3.5's card: 32,768 output tokens for most queries (thinking).
QWEN_THINKING_MAX_TOKENS = 32768
#: Requests kept in flight per copy of the model a server runs (`--concurrency` default)
PER_REPLICA_CONCURRENCY = 8
#: Context for `vllm serve`: 50 shots (~15k tokens) plus a full reasoning budget, with room.
SERVE_MAX_MODEL_LEN = 65536


@dataclass(frozen=True)
class Hardware:
    """One node's GPUs, as `strop-llm presets --gpus` names them (`8xH100`)."""

    count: int
    gpu: str  # H100 | H200

    @property
    def name(self) -> str:
        return f"{self.count}x{self.gpu}"

    @classmethod
    def parse(cls, text: str) -> Hardware:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(H100|H200)\s*", text, re.IGNORECASE)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"--gpus {text!r}: expected NxH100 or NxH200, e.g. 8xH100")
        return cls(int(match.group(1)), match.group(2).upper())


#: The node the vLLM recipes are written for: `serve_command()`'s line.
RECIPE_NODE = Hardware(8, "H200")
KNOWN_HARDWARE = (
    Hardware(8, "H200"),
    Hardware(8, "H100"),
    Hardware(1, "H100"),
    Hardware(1, "H200"),
)


@dataclass(frozen=True)
class ServeLine:
    """How one preset is hosted on one node: a command (argv), or why it does not fit."""

    argv: tuple[str, ...] = ()
    note: str = ""  # what to do instead, or a caveat
    served_id: str = ""  # when the line serves another checkpoint (FP8): --served-id this

    @property
    def command(self) -> str:
        return shlex.join(self.argv) if self.argv else ""


@dataclass(frozen=True)
class ModelPreset:
    """One model: its served id, thinking switch, sampling advice and serving command."""

    name: str
    served_id: str
    think: bool = False  # paper default: reasoning suffix (and thinking switch) on
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_tokens_think: int | None = None  # the card's budget with thinking on, when it differs
    #: extra_body for thinking on / off; empty for models without a switch
    think_on: dict[str, Any] = field(default_factory=dict)
    think_off: dict[str, Any] = field(default_factory=dict)
    #: the card's sampling with thinking on / off (`--card-sampling`)
    card_think: dict[str, float] = field(default_factory=dict)
    card_no_think: dict[str, float] = field(default_factory=dict)
    #: output in OpenAI's Harmony format (gpt-oss): "analysis...assistantfinal..."
    harmony: bool = False
    #: OpenAI-hosted reasoning model: max_completion_tokens, no temperature or seed
    reasoning_api: bool = False
    #: `vllm serve` options beyond the model id
    tensor_parallel_size: int = 1
    reasoning_parser: str | None = None
    serve_extra: tuple[str, ...] = ()
    #: GPU memory one replica needs (weights as served), to tell what fits (GB)
    weights_gb: int = 0
    #: the official smaller checkpoint (FP8) for nodes the full one does not fit
    fp8_id: str | None = None
    #: printed under each line that serves the model (the recipe's alternatives)
    serve_note: str = ""

    @property
    def card_sampling(self) -> bool:
        return bool(self.card_think or self.card_no_think)

    def card(self, think: bool) -> dict[str, float]:
        """The card's sampling for the thinking mode in use (empty: the card has none)."""
        return dict(self.card_think if think else self.card_no_think)

    def budget(self, think: bool) -> int:
        return self.max_tokens_think if think and self.max_tokens_think else self.max_tokens

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

    def serve_args(self, model: str | None = None, tp: int | None = None, dp: int = 1) -> list[str]:
        """The `vllm serve` command line (argv) that hosts this preset: `tp` GPUs per copy of
        the model (default: the recipe's), `dp` copies side by side (data parallel)."""
        args = ["vllm", "serve", model or self.served_id]
        tp = tp or self.tensor_parallel_size
        if tp > 1:
            args += ["--tensor-parallel-size", str(tp)]
        if dp > 1:
            args += ["--data-parallel-size", str(dp)]
        args += ["--max-model-len", str(SERVE_MAX_MODEL_LEN)]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        return args + ["--enable-prefix-caching", *self.serve_extra]

    def serve_command(self) -> str:
        """The line for the recipes' own node (8x H200)."""
        return self.serve_line(RECIPE_NODE).command

    def serve_line(self, hardware: Hardware) -> ServeLine:
        """The line for `hardware`, or why it does not fit (module docstring: the sources).

        A node with room for several copies of the model (its GPUs a multiple of the copy's
        tensor parallel size) serves them all behind one endpoint (`--data-parallel-size`)."""
        per_gpu = {"H100": 80, "H200": 141}[hardware.gpu]
        need = self.weights_gb
        tp = self.tensor_parallel_size
        dp = max(1, hardware.count // tp)
        if self.name == "gpt-oss-120b" and hardware.gpu == "H100":
            args = self.serve_args(tp=1, dp=dp)
            args += ["--gpu-memory-utilization", "0.95", "--max-num-batched-tokens", "1024"]
            note = "the recipe's flags for tensor parallel size 1 on H100 (defaults run OOM)"
            return ServeLine(tuple(args), "; ".join(filter(None, (note, _replicas_note(dp)))))
        if not need or need <= 0.9 * per_gpu * min(hardware.count, tp):
            if hardware.count >= tp:
                return ServeLine(tuple(self.serve_args(dp=dp)), _replicas_note(dp))
        if self.fp8_id and hardware.count >= tp:
            return ServeLine(
                tuple(self.serve_args(self.fp8_id, dp=dp)),
                f"BF16 weights (~{need} GB) do not fit {hardware.name}: the official FP8 "
                f"checkpoint, or BF16 at --tensor-parallel-size {2 * tp} over two nodes",
                served_id=self.fp8_id,
            )
        return ServeLine(
            (),
            f"does not fit {hardware.name} (~{need} GB of weights at tensor parallel size "
            f"{tp}): use 8xH200, or two nodes (--pipeline-parallel-size 2)",
        )


def _replicas_note(dp: int) -> str:
    if dp < 2:
        return ""
    return (
        f"{dp} copies of the model behind one endpoint; strop-llm decode reads their number "
        f"from the server and keeps {dp * PER_REPLICA_CONCURRENCY} requests in flight"
    )


class _Switch(TypedDict):
    think_on: dict[str, Any]
    think_off: dict[str, Any]


def _effort_switch(off: str) -> _Switch:
    """The thinking switch of OpenAI's reasoning models (gpt-oss, GPT-5), which cannot stop
    reasoning: "on" is their default effort, `medium`; "off" the least effort each accepts."""
    return {"think_on": {"reasoning_effort": "medium"}, "think_off": {"reasoning_effort": off}}


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "qwen3.5",
            "Qwen/Qwen3.5-397B-A17B",
            think=False,
            max_tokens=REASONING_MAX_TOKENS,
            max_tokens_think=QWEN_THINKING_MAX_TOKENS,
            think_on={"chat_template_kwargs": {"enable_thinking": True}},
            think_off={"chat_template_kwargs": {"enable_thinking": False}},
            card_think={"temperature": 1.0, "top_p": 0.95, "top_k": 20, "presence_penalty": 1.5},
            card_no_think={
                "temperature": 0.7,
                "top_p": 0.8,
                "top_k": 20,
                "presence_penalty": 1.5,
            },
            tensor_parallel_size=8,
            reasoning_parser="qwen3",
            weights_gb=800,
            fp8_id="Qwen/Qwen3.5-397B-A17B-FP8",
            serve_note="for throughput the recipe serves the FP8 checkpoint as 8 data-parallel "
            "ranks: --data-parallel-size 8 --enable-expert-parallel --language-model-only "
            "(then --served-id Qwen/Qwen3.5-397B-A17B-FP8)",
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
            weights_gb=685,
        ),
        ModelPreset(
            "gpt-oss-120b",
            "openai/gpt-oss-120b",
            think=True,
            max_tokens=REASONING_MAX_TOKENS,
            **_effort_switch(off="low"),
            # gpt-oss card: temperature 1.0, top_p 1.0 (either mode)
            card_think={"temperature": 1.0, "top_p": 1.0},
            card_no_think={"temperature": 1.0, "top_p": 1.0},
            harmony=True,
            tensor_parallel_size=1,
            reasoning_parser="openai_gptoss",
            weights_gb=65,
        ),
        ModelPreset(
            "gpt-5",
            "gpt-5",
            think=True,
            max_tokens=REASONING_MAX_TOKENS,
            **_effort_switch(off="minimal"),
            reasoning_api=True,
        ),
    )
}
#: OpenAI-hosted reasoning models by name: they reject max_tokens and temperature.
_OPENAI_REASONING = re.compile(r"^(openai/)?(gpt-5(?!-chat)|o[134])([-.].*)?$", re.IGNORECASE)


def describe_presets(hardware: Hardware | None = None) -> str:
    """Every preset as text: what is sent, how it samples, and the two-step recipe for
    `hardware` (every known node when None)."""
    nodes = [hardware] if hardware else list(KNOWN_HARDWARE)
    blocks = []
    for p in PRESETS.values():
        card = "; ".join(
            f"{mode} ({', '.join(f'{k} {v:g}' for k, v in c.items())})"
            for mode, c in (("thinking", p.card_think), ("non-thinking", p.card_no_think))
            if c
        )
        lines = [
            f"{p.name}: {p.served_id}",
            f"  thinking: {'on' if p.think else 'off'} by default (paper); "
            f"on sends {json.dumps(p.think_on)}, off sends {json.dumps(p.think_off)}",
            "  sampling: "
            + (
                "the model's default (it accepts no other temperature)"
                if p.reasoning_api
                else "temperature 0 (paper); "
                + (f"the card's with --card-sampling: {card}" if card else "no card advice")
            ),
            f"  max_tokens: {p.max_tokens}"
            + (f", {p.max_tokens_think} with thinking on" if p.max_tokens_think else "")
            + ("; output in Harmony format (parsed)" if p.harmony else "")
            + ("; sent as max_completion_tokens" if p.reasoning_api else ""),
        ]
        if p.reasoning_api:
            lines.append("  serve:  hosted by OpenAI (OPENAI_API_KEY, OPENAI_BASE_URL)")
            lines.append(f"  decode: strop-llm decode --model {p.name} --k 128")
        else:
            for node in nodes:
                line = p.serve_line(node)
                label = f"  serve on {node.name}: "
                if line.command:
                    lines.append(label + line.command)
                    for note in (line.note, p.serve_note):
                        if note:
                            lines.append(f"    ({note})")
                else:
                    lines.append(label + line.note)
            served = ""
            if hardware is not None and p.serve_line(hardware).served_id:
                served = f" --served-id {p.serve_line(hardware).served_id}"
            lines.append(
                f"  decode: strop-llm decode --model {p.name} --k 128 "
                f"--base-url http://HOST:8000/v1{served}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def resolve_model(name: str, served_id: str | None = None) -> ModelPreset:
    """The preset for `name` (or a pass-through preset), with `served_id` overriding its id."""
    preset = PRESETS.get(name.lower())
    if preset is None:
        preset = ModelPreset(name, name, reasoning_api=bool(_OPENAI_REASONING.match(name)))
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
