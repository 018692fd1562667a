"""Any OpenAI-compatible chat endpoint (vLLM's server first among them) through `openai`.

Design decisions
- Answers are streamed by default. `timeout` is then an idle limit (no byte for that long),
  never a cap on an answer that keeps arriving: a reasoning model at 50 tokens/s needs 330 s
  for 16,384 tokens, which a per-attempt cap of 120 s would kill and retry from scratch
  forever. A separate total deadline, `timeout + max_tokens / min_tokens_per_s`, catches a
  runaway request on a server slower than any plausible rate.
- What a retry costs decides whether it is made. A failure before the first chunk (refused,
  5xx, no response) wastes nothing and is retried up to `max_attempts`
  (timeouts, dropped connections, 408, 409, 429, 5xx; never another 4xx). A failure after
  output had started (a stall, a dropped stream; any timeout when not streaming) throws away
  a long generation, so it is retried at most `long_retries` times, counted in the stats the
  progress bar shows; hitting the deadline is never retried (the same request would run away
  again). Whatever had arrived stays in the error (`TransportError.partial`).
- The client's own retries are off (`max_retries=0`) so retries never stack. Backoff is
  capped exponential with "equal jitter"; a `retry-after` (or `retry-after-ms`) header wins,
  capped at `max_retry_after`, and pauses every worker of this backend, since a rate limit is
  shared by all of them.
- An HTTP 200 that is no answer (a proxy's HTML page, cut-off JSON, an event stream without
  events or with a malformed one) is a failed attempt, retried like a 5xx, never an empty
  answer. A server that ignores `stream` and sends one JSON completion is read as such.
- Reasoning is read from `reasoning` or `reasoning_content` (vLLM renamed the field); text
  that arrives unsplit (`<think>` blocks, Harmony channels) is split by `reasoning.py`.
- `extra_body` carries what the OpenAI schema lacks: the thinking switch
  (`chat_template_kwargs`, `reasoning_effort`), `top_k`, anything from `--extra-body`.
- The API key is given to the client and nowhere else; every error message is redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import openai
from pydantic import BaseModel, ConfigDict, Field

from llm_decode.backends.base import (
    Completion,
    Message,
    TransportError,
    TransportStats,
    one_line,
    redact,
)
from llm_decode.reasoning import split_output

RETRY_STATUS = frozenset({408, 409, 429})


class _Malformed(ValueError):
    """An HTTP 200 whose body is not a usable chat completion (retried like a 5xx)."""


class OpenAIConfig(BaseModel):
    """Transport and sampling settings for one OpenAI-compatible endpoint."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="Server root including /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The served model id sent as `model`.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(2048, ge=1)
    seed: int | None = Field(0, description="Sent as `seed` (vLLM and OpenAI honour it).")
    stream: bool = Field(True, description="Stream the answer (server-sent events).")
    timeout: float = Field(
        120.0, gt=0, description="Idle limit: seconds without a byte (streaming) or an answer."
    )
    min_tokens_per_s: float = Field(
        10.0, gt=0, description="Slowest plausible rate; sets the total deadline per attempt."
    )
    max_attempts: int = Field(5, ge=1, description="Attempts per request, the first included.")
    long_retries: int = Field(
        1, ge=0, description="Retries of an attempt that failed after output had started."
    )
    backoff_base: float = Field(1.0, ge=0, description="Delay before the 2nd attempt, seconds.")
    backoff_cap: float = Field(30.0, ge=0, description="Largest computed delay, seconds.")
    max_retry_after: float = Field(120.0, ge=0, description="Cap on a server's retry-after.")
    response_schema: dict[str, Any] | None = Field(
        None, description="JSON schema sent as response_format (structured output) when set."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Fields merged into the request body as they are."
    )
    harmony: bool = Field(False, description="Unsplit output may be Harmony (gpt-oss).")

    @property
    def deadline(self) -> float:
        """Total seconds one attempt may take, however steadily output arrives."""
        return self.timeout + self.max_tokens / self.min_tokens_per_s


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay after failed attempt `attempt` (1-based): capped exponential, equal jitter."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
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


class _Answer:
    """What one attempt has received so far: text, reasoning, usage, finish reason."""

    __slots__ = ("chunks", "text", "reasoning", "usage", "finish_reason", "tokens", "stats")

    def __init__(self, stats: TransportStats) -> None:
        self.chunks = 0
        self.tokens = 0
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.stats = stats

    def add_chunk(self, chunk: Any) -> None:
        """One stream event, as the JSON object the server sent (see `_stream`)."""
        if not isinstance(chunk, dict):
            raise ValueError(f"a stream event is a {type(chunk).__name__}, not an object")
        self.chunks += 1
        self.stats.chunks += 1
        usage = chunk.get("usage")
        if usage:
            self.usage = {k: v for k, v in usage.items() if v is not None}
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            if content:
                self.text.append(content)
            if thought:
                self.reasoning.append(thought)
            if content or thought:
                self.tokens += 1
                self.stats.tokens += 1
                self.stats.last_token_at = time.monotonic()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def set_response(self, response: Any) -> None:
        """A whole (non-streamed) completion as the SDK parsed it."""
        if isinstance(response, (str, bytes)) or not hasattr(response, "choices"):
            text = response if isinstance(response, str) else type(response).__name__
            raise _Malformed(f"HTTP 200 but the body is not a chat completion ({text[:80]!r})")
        if not response.choices:
            raise _Malformed("HTTP 200 but the response has no choices")
        self.chunks = 1
        self.stats.chunks += 1
        if response.usage is not None:
            self.usage = response.usage.model_dump(exclude_none=True)
        choice = response.choices[0]
        message = choice.message
        self.text = [message.content or ""]
        extra = message.model_extra or {}
        self.reasoning = [extra.get("reasoning") or extra.get("reasoning_content") or ""]
        self.finish_reason = choice.finish_reason
        self.tokens = int(self.usage.get("completion_tokens", 0))
        self.stats.tokens += self.tokens
        self.stats.last_token_at = time.monotonic()

    def set_body(self, raw: bytes) -> None:
        """A 200 that is not an event stream: one JSON completion, or a failed attempt."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise _Malformed(f"HTTP 200 but the body is not valid JSON ({exc})") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices or not isinstance(choices[0], dict):
            head = raw[:80].decode(errors="replace")
            raise _Malformed(f"HTTP 200 but the body is not a chat completion ({head!r})")
        message = choices[0].get("message") or {}
        self.add_chunk(
            {
                "choices": [
                    {
                        "delta": message,
                        "finish_reason": choices[0].get("finish_reason"),
                    }
                ],
                "usage": data.get("usage"),
            }
        )

    def completion(self, harmony: bool, latency: float, attempts: int) -> Completion:
        text, unsplit = split_output("".join(self.text), harmony=harmony)
        reasoning = "".join(self.reasoning)
        usage = self.usage or ({"completion_tokens": self.tokens} if self.tokens else {})
        return Completion(
            text=text,
            reasoning="\n".join(r for r in (reasoning, unsplit) if r),
            usage=usage,
            latency_s=latency,
            attempts=attempts,
            finish_reason=self.finish_reason,
        )


class OpenAIBackend:
    """Chat completions with our retry loop; safe to call from many tasks at once."""

    def __init__(
        self,
        config: OpenAIConfig,
        api_key: str | None,
        *,
        rng_seed: int = 0,
        stats: TransportStats | None = None,
    ) -> None:
        self.config = config
        self.endpoint = config.base_url.rstrip("/")
        self.stats = stats if stats is not None else TransportStats()
        self._secrets = [api_key]
        self._rng = random.Random(rng_seed)
        self._resume_at = 0.0  # monotonic time before which no worker sends (retry-after)
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            # vLLM accepts any key when started without --api-key; the SDK insists on one.
            api_key=api_key or "EMPTY",
            max_retries=0,
            # read = the idle limit: the longest wait for the next byte of the stream
            timeout=openai.Timeout(config.timeout, connect=min(config.timeout, 10.0)),
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
        if cfg.stream:
            args["stream"] = True
            args["stream_options"] = {"include_usage": True}
        if cfg.extra_body:
            args["extra_body"] = cfg.extra_body
        return args

    async def _attempt(self, args: dict[str, Any], answer: _Answer) -> None:
        if not self.config.stream:
            answer.set_response(await self._client.chat.completions.create(**args))
            return
        # The SDK's own request path (auth, errors, timeouts, SSE decoding), but events stay
        # the dicts the server sent: building a typed chunk per token costs ~0.1 ms of CPU,
        # which at thousands of tokens/s across concurrent requests would be the bottleneck.
        body = {k: v for k, v in args.items() if k != "extra_body"} | args.get("extra_body", {})
        stream = await self._client.post(
            "/chat/completions",
            cast_to=object,
            body=body,
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        async with stream:
            if "text/event-stream" not in stream.response.headers.get("content-type", ""):
                answer.set_body(await stream.response.aread())
                return
            async for chunk in stream:
                answer.add_chunk(chunk)

    async def complete(self, messages: list[Message], codes: Sequence[int] = ()) -> Completion:
        self.stats.in_flight += 1
        try:
            return await self._complete(messages)
        finally:
            self.stats.in_flight -= 1

    async def _complete(self, messages: list[Message]) -> Completion:
        cfg = self.config
        args = self._request_args(messages)
        start = time.perf_counter()
        long_left = cfg.long_retries
        for attempt in range(1, cfg.max_attempts + 1):
            await self._wait_for_rate_limit()
            answer = _Answer(self.stats)
            status: int | None = None
            retry_after: float | None = None
            idle_no_stream = False
            began = time.monotonic()
            try:
                await asyncio.wait_for(self._attempt(args, answer), timeout=cfg.deadline)
            except TimeoutError:  # asyncio's (3.11+) and the builtin are one class
                if time.monotonic() - began < cfg.deadline:  # not the deadline: an idle timeout
                    error = "timed out"
                else:
                    raise self._error(
                        f"deadline of {cfg.deadline:g} s passed after {answer.tokens} tokens "
                        f"(max_tokens {cfg.max_tokens} at >= {cfg.min_tokens_per_s:g} tokens/s); "
                        "not retried",
                        None,
                        attempt,
                        answer,
                        start,
                    ) from None
            except openai.APITimeoutError:
                if not cfg.stream:
                    error = f"no answer within {cfg.timeout:g} s (streaming off)"
                    idle_no_stream = True
                elif answer.chunks:
                    error = f"stalled: no data for {cfg.timeout:g} s after {answer.tokens} tokens"
                else:
                    error = f"no response within {cfg.timeout:g} s"
            except openai.APIStatusError as exc:
                status = exc.status_code
                error = f"HTTP {status}: {exc.message}"
                if status not in RETRY_STATUS and status < 500:
                    raise self._error(error, status, attempt, answer, start) from None
                retry_after = retry_after_seconds(exc.response.headers)
            except openai.APIConnectionError as exc:
                error = f"connection failed ({exc.__cause__ or exc})"
            except openai.APIError as exc:  # an error event inside the stream
                error = f"stream error: {exc.message}"
            except (openai.OpenAIError, ValueError) as exc:
                # an HTTP 200 that is no answer (`_Malformed`), a stream event that is not
                # JSON, a body the SDK cannot read: a failed attempt like any other
                detail = str(exc) if isinstance(exc, _Malformed) else f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ValueError) and not isinstance(exc, _Malformed):
                    detail = f"a stream event is not valid JSON ({exc})"
                error = f"malformed response: {detail}"
            else:
                if answer.chunks == 0:
                    error = "malformed response: HTTP 200 but the event stream carried no event"
                else:
                    return answer.completion(cfg.harmony, time.perf_counter() - start, attempt)
            if answer.tokens or idle_no_stream:  # a long generation was lost
                self.stats.long_timeouts += 1
                if long_left == 0:
                    raise self._error(
                        f"{error}; not retried (a long generation; --long-retries "
                        f"{cfg.long_retries} used)",
                        status,
                        attempt,
                        answer,
                        start,
                    )
                long_left -= 1
            if attempt == cfg.max_attempts:
                raise self._error(
                    f"{error} (gave up after {attempt} attempts)", status, attempt, answer, start
                )
            if retry_after is not None:
                delay = min(retry_after, cfg.max_retry_after)
                self._resume_at = max(self._resume_at, time.monotonic() + delay)
            else:
                delay = backoff_delay(attempt, cfg.backoff_base, cfg.backoff_cap, self._rng)
            self.stats.retries += 1
            self.stats.last_event = one_line(
                redact(
                    f"{error}; retry {attempt + 1}/{cfg.max_attempts} in {delay:.1f} s",
                    self._secrets,
                ),
                160,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _wait_for_rate_limit(self) -> None:
        wait = self._resume_at - time.monotonic()
        if wait > 0:
            self.stats.waiting = f"rate limit: the server asked to wait {wait:.0f} s"
            await asyncio.sleep(wait)
            self.stats.waiting = ""

    def _error(
        self, message: str, status: int | None, attempts: int, answer: _Answer, start: float
    ) -> TransportError:
        partial = None
        if answer.text or answer.reasoning:
            partial = answer.completion(self.config.harmony, time.perf_counter() - start, attempts)
            partial.partial = True
        return TransportError(
            one_line(redact(message, self._secrets)),
            status=status,
            attempts=attempts,
            partial=partial,
        )

    async def aclose(self) -> None:
        await self._client.close()
