"""Any OpenAI-compatible chat endpoint (vLLM's server first among them) through `openai`.

Design decisions
- The client's own retries are off (`max_retries=0`) and this module owns the retry loop, so
  retries never stack (the SDK's 2 retries times ours) and the policy is the one DESIGN.md
  specifies: retry timeouts, dropped connections, 408, 409, 429, 5xx and an HTTP 200 whose
  body is no chat completion (an HTML error page from a proxy, cut-off JSON); never 400 (or
  any other 4xx: resending the same bad request cannot help).
- Backoff is capped exponential with "equal jitter" (half fixed, half random), so concurrent
  workers that failed together do not retry together. A `retry-after` (or `retry-after-ms`)
  header wins over the computed delay, capped at `max_retry_after`; it also pauses every
  worker of this backend until then, since a rate limit is shared by all of them.
- Each attempt has a hard wall-clock deadline (`asyncio.wait_for`) on top of httpx's
  per-operation timeouts, which a server trickling bytes would otherwise never trip.
- Reasoning is read from `reasoning` or `reasoning_content` (vLLM renamed the field), and
  `<think>` blocks left in `content` (no reasoning parser on the server) are moved out.
- The API key is given to the client and nowhere else; every error message is redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx
import openai
from pydantic import BaseModel, ConfigDict, Field

from llm_decode.backends.base import Completion, Message, TransportError, one_line, redact
from llm_decode.schema import split_reasoning

RETRY_STATUS = frozenset({408, 409, 429})


class _Malformed(Exception):
    """An HTTP 200 whose body is not a usable chat completion (retried like a 5xx)."""


class OpenAIConfig(BaseModel):
    """Transport and sampling settings for one OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="Server root including /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The served model id sent as `model`.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(2048, ge=1)
    seed: int | None = Field(0, description="Sent as `seed` (vLLM and OpenAI honour it).")
    timeout: float = Field(120.0, gt=0, description="Seconds per attempt, wall clock.")
    max_attempts: int = Field(5, ge=1, description="Attempts per request, the first included.")
    backoff_base: float = Field(1.0, ge=0, description="Delay before the 2nd attempt, seconds.")
    backoff_cap: float = Field(30.0, ge=0, description="Largest computed delay, seconds.")
    max_retry_after: float = Field(120.0, ge=0, description="Cap on a server's retry-after.")
    response_schema: dict[str, Any] | None = Field(
        None, description="JSON schema sent as response_format (structured output) when set."
    )


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay after failed attempt `attempt` (1-based): capped exponential, equal jitter."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


def retry_after_seconds(headers: httpx.Headers | None) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAIBackend:
    """Chat completions with our retry loop; safe to call from many tasks at once."""

    def __init__(self, config: OpenAIConfig, api_key: str | None, *, rng_seed: int = 0) -> None:
        self.config = config
        self.endpoint = config.base_url.rstrip("/")
        self._secrets = [api_key]
        self._rng = random.Random(rng_seed)
        self._resume_at = 0.0  # monotonic time before which no worker sends (retry-after)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            # vLLM accepts any key when started without --api-key; the SDK insists on one.
            api_key=api_key or "EMPTY",
            max_retries=0,
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 10.0)),
        )

    def _request_args(self, messages: list[Message]) -> dict[str, Any]:
        cfg = self.config
        args: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }
        if cfg.seed is not None:
            args["seed"] = cfg.seed
        if cfg.response_schema is not None:
            args["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "scene", "schema": cfg.response_schema, "strict": True},
            }
        return args

    async def complete(self, messages: list[Message], codes: Sequence[int] = ()) -> Completion:
        cfg = self.config
        args = self._request_args(messages)
        start = time.perf_counter()
        for attempt in range(1, cfg.max_attempts + 1):
            wait = self._resume_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await asyncio.wait_for(
                    self._client.chat.completions.create(**args), timeout=cfg.timeout
                )
                completion = self._completion(response, time.perf_counter() - start, attempt)
            except (asyncio.TimeoutError, openai.APITimeoutError):
                error, status, retry_after = f"timed out after {cfg.timeout:g} s", None, None
            except openai.APIStatusError as exc:
                status = exc.status_code
                error = f"HTTP {status}: {exc.message}"
                if status not in RETRY_STATUS and status < 500:
                    raise self._error(error, status, attempt) from None
                retry_after = retry_after_seconds(exc.response.headers)
            except openai.APIConnectionError as exc:
                error, status, retry_after = (
                    f"connection failed ({exc.__cause__ or exc})",
                    None,
                    None,
                )
            except (openai.OpenAIError, ValueError, _Malformed) as exc:
                # HTTP 200 with a body that is no completion (a proxy's HTML page, cut-off
                # JSON): a failed attempt like any other, retried within max_attempts.
                if isinstance(exc, ValueError) and not isinstance(exc, _Malformed):
                    detail = f"HTTP 200 but the body is not valid JSON ({exc})"
                elif isinstance(exc, openai.OpenAIError):
                    detail = f"{type(exc).__name__}: {exc}"
                else:
                    detail = str(exc)
                error, status, retry_after = f"malformed response: {detail}", None, None
            else:
                return completion
            if attempt == cfg.max_attempts:
                raise self._error(f"{error} (gave up after {attempt} attempts)", status, attempt)
            if retry_after is not None:
                delay = min(retry_after, cfg.max_retry_after)
                self._resume_at = max(self._resume_at, time.monotonic() + delay)
            else:
                delay = backoff_delay(attempt, cfg.backoff_base, cfg.backoff_cap, self._rng)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _error(self, message: str, status: int | None, attempts: int) -> TransportError:
        return TransportError(
            one_line(redact(message, self._secrets)), status=status, attempts=attempts
        )

    def _completion(self, response: Any, latency: float, attempts: int) -> Completion:
        if isinstance(response, (str, bytes)) or not hasattr(response, "choices"):
            text = response if isinstance(response, str) else type(response).__name__
            raise _Malformed(f"HTTP 200 but the body is not a chat completion ({text[:80]!r})")
        if not response.choices:
            raise _Malformed("response has no choices")
        choice = response.choices[0]
        message = choice.message
        extra = message.model_extra or {}
        reasoning = extra.get("reasoning") or extra.get("reasoning_content") or ""
        text, think = split_reasoning(message.content or "")
        usage = response.usage.model_dump(exclude_none=True) if response.usage else {}
        return Completion(
            text=text,
            reasoning="\n".join(r for r in (reasoning, think) if r),
            usage=usage,
            latency_s=latency,
            attempts=attempts,
            finish_reason=choice.finish_reason,
        )

    async def aclose(self) -> None:
        await self._client.close()
