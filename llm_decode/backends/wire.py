"""What an OpenAI-compatible server may send back, validated at the edge (pydantic).

Design decisions
- A server's JSON is untrusted input: a 200 with `usage: [1, 2]`, `content: 12345` or
  `choices` as an object used to travel into the runner and abort the whole run with a
  traceback. Every body and every stream event goes through these models first; a mismatch
  is one line naming the field (`WireError`), which the backend treats as a failed attempt.
- The models check only the fields we read, with the types the OpenAI schema gives them, and
  let everything else through (`extra="allow"`): servers add fields (`reasoning_content`,
  `prompt_tokens_details`, vLLM's `stop_reason`) and that must never fail an answer.
- No coercion of strings: pydantic's lax mode would read `content: 12345` as "12345" and hide
  a broken server, so text fields are strict.
- Validation costs a few microseconds per event, well below the SDK's typed chunk objects
  the backend avoids for the same reason.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from llm_decode.schema import first_error


class WireError(ValueError):
    """A server's JSON that is not what the OpenAI schema says; the message is one line."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Open):
    prompt_tokens: StrictInt | None = None
    completion_tokens: StrictInt | None = None
    total_tokens: StrictInt | None = None

    def counts(self) -> dict[str, int]:
        return {
            k: v
            for k, v in (
                ("prompt_tokens", self.prompt_tokens),
                ("completion_tokens", self.completion_tokens),
                ("total_tokens", self.total_tokens),
            )
            if v is not None
        }


class Delta(_Open):
    """A streamed delta or a whole message: the text and the reasoning (two spellings)."""

    content: StrictStr | None = None
    reasoning: StrictStr | None = None
    reasoning_content: StrictStr | None = None

    @property
    def thought(self) -> str | None:
        return self.reasoning or self.reasoning_content


class ChunkChoice(_Open):
    delta: Delta = Field(default_factory=Delta)
    finish_reason: StrictStr | None = None


class Chunk(_Open):
    """One server-sent event of a streamed chat completion."""

    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None


class Choice(_Open):
    message: Delta = Field(default_factory=Delta)
    finish_reason: StrictStr | None = None


class ChatCompletion(_Open):
    """A whole (non-streamed) chat completion: at least one choice."""

    choices: list[Choice] = Field(min_length=1)
    usage: Usage | None = None


def _validate(model: type[BaseModel], data: Any, what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise WireError(f"{what}: {first_error(exc)}") from None


def parse_chunk(data: Any) -> Chunk:
    """A stream event as the server sent it (already JSON-decoded)."""
    result: Chunk = _validate(Chunk, data, "a stream event")
    return result


def parse_completion(data: Any) -> ChatCompletion:
    """A non-streamed body (already JSON-decoded)."""
    result: ChatCompletion = _validate(ChatCompletion, data, "the completion")
    return result


def error_detail(body: Any) -> str | None:
    """The human part of an error body: OpenAI's `error.message`, FastAPI's `detail`, ..."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(inner.get(key), str):
                    return str(inner[key])
        if isinstance(inner, str):
            return inner
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)
    if isinstance(body, str) and body.strip():
        return body.strip()
    return None
