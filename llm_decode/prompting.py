"""Few-shot prompts from Jinja templates: the shot block once per run, the query per image.

Design decisions
- A template defines named blocks, rendered separately: `context` (instructions, legend and
  shots; the system message), `query` (one image's codes; the user message) and optionally
  `repair` (the follow-up after an unparseable answer). `context` is rendered once per run
  with only run-level variables under `StrictUndefined`, so a template that leaks a query
  variable into it fails loudly and every query of a run shares a byte-identical prefix,
  which servers with prefix caching (vLLM's automatic prefix caching) reuse.
- The package template is `prompts/decode.j2`; `--template PATH` replaces it with a user file
  defining the same blocks. A missing block or variable is a one-line `PromptError`.
- Templates are code: full Jinja can reach Python objects through attribute access, so a
  template can run code. `--template` is the user's own file, which is their call (and the
  CLI help says so); a template from anyone else (none today: the package's are ours) must be
  rendered with `jinja2.sandbox.SandboxedEnvironment` instead.
- The repair turn echoes the failed answer back, cut to `REPAIR_ECHO_CHARS` (its head and
  tail, with the number of characters left out): a model that wrote thousands of tokens of
  garbage would otherwise send them back and overflow the context. The runner ends a repair
  turn the server still refuses as the parse failure it was.
- `think_suffix` (the reasoning instruction the paper gives DeepSeek-V3.1 and GPT-OSS-120B)
  is itself a template, `prompts/think_suffix.j2`, so it can be reworded without code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from llm_decode.schema import DecodedScene, abbreviation_legend

PACKAGE_TEMPLATE = "decode.j2"
THINK_TEMPLATE = "think_suffix.j2"
REQUIRED_BLOCKS = ("context", "query")
#: The most characters of a failed answer echoed back in the repair turn (~500 tokens): enough
#: for the model to see what it wrote (a scene is ~600 characters), never a context's worth.
REPAIR_ECHO_CHARS = 2000


def echo_excerpt(answer: str, limit: int = REPAIR_ECHO_CHARS) -> str:
    """`answer` when short, else its head and tail with how much was left out."""
    if len(answer) <= limit:
        return answer
    head, tail = answer[: limit * 3 // 4], answer[-(limit // 4) :]
    return f"{head}\n[... {len(answer) - len(head) - len(tail)} characters cut ...]\n{tail}"


class PromptError(ValueError):
    """A template that cannot be loaded or rendered; the message is one line."""


Message = dict[str, str]


def _package_text(name: str) -> str:
    return resources.files("prompts").joinpath(name).read_text(encoding="utf-8")


def think_suffix_text() -> str:
    return _package_text(THINK_TEMPLATE).strip()


@dataclass(frozen=True)
class Shot:
    codes: Sequence[int]
    scene: DecodedScene


class PromptBuilder:
    """Renders the run's context once and one query message per image."""

    def __init__(
        self,
        *,
        codebook_size: int,
        shots: Sequence[Shot],
        think: bool = False,
        template: str | Path | None = None,
        package: str = PACKAGE_TEMPLATE,
        extra_vars: dict[str, Any] | None = None,
    ) -> None:
        # `package` and `extra_vars`: another task's template and run-level variables
        # (`strop-llm qa`), rendered by the same machinery
        self.package = package
        self.source_name = str(template) if template else f"prompts/{package}"
        text = self._load(template)
        self.template_sha256 = hashlib.sha256(text.encode()).hexdigest()
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        try:
            self._template = env.from_string(text)
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(f"{self.source_name}: line {exc.lineno}: {exc.message}") from None
        missing = [b for b in REQUIRED_BLOCKS if b not in self._template.blocks]
        if missing:
            raise PromptError(
                f"{self.source_name}: missing block {missing[0]!r}; a decode template defines "
                f"blocks {', '.join(REQUIRED_BLOCKS)} (and optionally repair)"
            )
        self.run_vars: dict[str, Any] = {
            "codebook_size": int(codebook_size),
            "codebook_max": int(codebook_size) - 1,
            "abbr_legend": abbreviation_legend(),
            "think_suffix": think_suffix_text() if think else "",
            "shots": [
                {"codes": [int(c) for c in s.codes], "scene": s.scene.to_prompt_json()}
                for s in shots
            ],
            "n_shots": len(shots),
            **(extra_vars or {}),
        }
        self.context = self._render("context", self.run_vars)

    def _load(self, template: str | Path | None) -> str:
        if template is None:
            return _package_text(self.package)
        path = Path(template)
        if not path.is_file():
            raise PromptError(f"{path}: template file not found")
        return path.read_text(encoding="utf-8")

    def _render(self, block: str, variables: dict[str, Any]) -> str:
        try:
            ctx = self._template.new_context(dict(variables))
            return "".join(self._template.blocks[block](ctx)).strip()
        except jinja2.UndefinedError as exc:
            raise PromptError(
                f"{self.source_name}: block {block!r}: {exc.message} "
                f"(available: {', '.join(sorted(variables))})"
            ) from None
        except jinja2.TemplateError as exc:
            raise PromptError(f"{self.source_name}: block {block!r}: {exc}") from None

    def messages(self, codes: Sequence[int], **query_vars: Any) -> list[Message]:
        """The chat messages for one image: the shared context, then its codes (and any
        other per-query variables the template uses)."""
        variables = {**self.run_vars, "codes": [int(c) for c in codes], **query_vars}
        query = self._render("query", variables)
        return [{"role": "system", "content": self.context}, {"role": "user", "content": query}]

    def repair_messages(
        self, messages: list[Message], answer: str, error: str
    ) -> list[Message] | None:
        """Messages for the one retry after a parse failure; None resends the original."""
        if "repair" not in self._template.blocks:
            return None
        repair = self._render("repair", {**self.run_vars, "error": error})
        return [
            *messages,
            {"role": "assistant", "content": echo_excerpt(answer)},
            {"role": "user", "content": repair},
        ]
