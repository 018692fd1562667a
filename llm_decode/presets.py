"""Short model names mapped to served ids and their prompt settings (paper Appendix G).

Design decisions
- A preset carries what the paper varies per model: the served id, whether the reasoning
  suffix is used (DeepSeek-V3.1 and GPT-OSS-120B: yes; Qwen3.5: no) and a `max_tokens` large
  enough for reasoning models to finish thinking before the JSON.
- Unknown names pass through unchanged as the served id, so any model a server hosts works;
  `--served-id` overrides the id of a preset (a local checkpoint path, a quantised variant).
- The results folder is named after the name the user typed, made filesystem-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: Tokens for non-reasoning models: 10 objects of JSON need about 400.
DEFAULT_MAX_TOKENS = 2048
#: Reasoning models think before answering; too small a budget cuts the answer off.
REASONING_MAX_TOKENS = 16384


@dataclass(frozen=True)
class ModelPreset:
    name: str
    served_id: str
    think: bool = False
    max_tokens: int = DEFAULT_MAX_TOKENS


PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            "qwen3.5", "Qwen/Qwen3.5-397B-A17B", think=False, max_tokens=REASONING_MAX_TOKENS
        ),
        ModelPreset(
            "deepseek-v3.1",
            "deepseek-ai/DeepSeek-V3.1",
            think=True,
            max_tokens=REASONING_MAX_TOKENS,
        ),
        ModelPreset(
            "gpt-oss-120b", "openai/gpt-oss-120b", think=True, max_tokens=REASONING_MAX_TOKENS
        ),
    )
}


def resolve_model(name: str, served_id: str | None = None) -> ModelPreset:
    """The preset for `name` (or a pass-through preset), with `served_id` overriding its id."""
    preset = PRESETS.get(name.lower(), ModelPreset(name, name))
    return replace(preset, served_id=served_id) if served_id else preset


def folder_name(name: str) -> str:
    """A filesystem-safe folder name for a model (`org/model` -> `org--model`)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-.")
    return safe or "model"
