"""Separate a model's reasoning from its answer: `<think>` blocks and OpenAI's Harmony format.

Design decisions
- Reasoning never reaches the parser: it goes to the row's `reasoning` field. A server with a
  reasoning parser already splits it (the `reasoning` / `reasoning_content` fields); this
  module handles text that arrives unsplit (no parser on the server, vLLM's offline engine).
- Harmony (gpt-oss) comes in two shapes: with its special tokens
  (`<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...`)
  or, when the engine skips special tokens (vLLM's default), flattened to
  `analysis...assistantfinal...`. Every channel but `final` is reasoning. The flattened shape
  is only recognised for models declared Harmony (a preset flag), since "analysis" could
  begin an ordinary answer; the tokenised shape is unambiguous and always recognised.
- Output cut off while still reasoning (no final channel, an unclosed `<think>`) leaves an
  empty answer, which is a parse failure, never reasoning parsed as a scene.
"""

from __future__ import annotations

import re

from llm_decode.schema import split_reasoning

_HARMONY_MESSAGE = re.compile(
    r"<\|channel\|>\s*(\w+)[^<]*<\|message\|>(.*?)(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|$)",
    re.DOTALL,
)
_FLAT_FINAL = re.compile(r"assistant\s*final", re.IGNORECASE)
_FLAT_START = re.compile(r"^\s*(?:assistant\s*)?analysis", re.IGNORECASE)


def split_harmony(text: str, *, flattened: bool = True) -> tuple[str, str] | None:
    """(answer, reasoning) of Harmony output, or None when `text` is not Harmony."""
    if "<|channel|>" in text:
        answer: list[str] = []
        reasoning: list[str] = []
        for channel, body in _HARMONY_MESSAGE.findall(text):
            (answer if channel.lower() == "final" else reasoning).append(body.strip())
        return "\n".join(answer).strip(), "\n".join(reasoning).strip()
    if flattened and _FLAT_START.match(text):
        parts = _FLAT_FINAL.split(text, maxsplit=1)
        thinking = _FLAT_START.sub("", parts[0], count=1).strip()
        return (parts[1].strip() if len(parts) == 2 else ""), thinking
    return None


def split_output(text: str, *, harmony: bool = False) -> tuple[str, str]:
    """(answer, reasoning) of raw model output: Harmony first, then `<think>` blocks."""
    found = split_harmony(text, flattened=harmony)
    if found is not None:
        return found
    return split_reasoning(text)
