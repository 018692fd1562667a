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
  events or with a malformed one, JSON whose fields have the wrong types: `wire.py`
  validates every body and event) is a failed attempt, retried like a 5xx, never an empty
  answer and never an exception out of the run. A server that ignores `stream` and sends one
  JSON completion is read as such; both paths read the server's JSON, not the SDK's objects.
- A stream that ends without a `finish_reason` (closed early, or cut mid-event) is an
  unfinished answer: a transport failure (retried like any failure after output had
  started), never a final answer that a rerun would skip.
- An answer is kept up to `max(max_tokens * 64, 64 KiB)` characters; a server that ignores
  `max_tokens` is read to its end (so usage and finish reason arrive) but the rest is not
  kept, and the answer's finish reason is `length`.
- A 4xx other than 408/409/429 is final for this request (`retryable=False`); the message
  carries the server's own detail (OpenAI's `error.message`, FastAPI's `detail`).
- OpenAI's reasoning models (`reasoning_api`) get `max_completion_tokens` and no
  temperature or seed, which they refuse with a 400.
- Reasoning is read from `reasoning` or `reasoning_content` (vLLM renamed the field); text
  that arrives unsplit (`<think>` blocks, Harmony channels) is split by `reasoning.py`.
- `extra_body` carries what the OpenAI schema lacks: the thinking switch
  (`chat_template_kwargs`, `reasoning_effort`), `top_k`, anything from `--extra-body`.
- The API key is given to the client and nowhere else; every error message is redacted, and
  the endpoint it reports has secret query parameters masked.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
import openai
from pydantic import Field

from llm_decode.backends.base import (
    Completion,
    Message,
    TransportError,
    TransportStats,
    one_line,
    redact,
    split_url_secrets,
)
from llm_decode.backends.transport import TransportOptions
from llm_decode.backends.wire import WireError, error_detail, parse_chunk, parse_completion
from llm_decode.reasoning import split_output

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 409, 429})
#: The most characters one answer (text and reasoning) may hold per token of `max_tokens`.
#: Real tokens average 3-4 characters and the longest in common vocabularies are runs of
#: spaces or punctuation well below this; a server that ignores `max_tokens` and streams
#: megabytes is cut here instead of filling memory and the results file.
MAX_CHARS_PER_TOKEN = 64
#: ... but never below this (64 KiB): a small budget must not cut odd but small output, e.g.
#: `transformers serve` streaming the rendered prompt back before the answer.
MIN_ANSWER_CHARS = 65536


class _Malformed(ValueError):
    """An HTTP 200 whose body is not a usable chat completion (retried like a 5xx)."""


class _Unfinished(ValueError):
    """A stream that ended before its answer did (a transport failure, never an answer)."""


class OpenAIConfig(TransportOptions):
    """Transport and sampling settings for one OpenAI-compatible endpoint."""

    base_url: str = Field(description="Server root including /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The served model id sent as `model`.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(2048, ge=1)
    seed: int | None = Field(0, description="Sent as `seed` (vLLM and OpenAI honour it).")
    max_retry_after: float = Field(120.0, ge=0, description="Cap on a server's retry-after.")
    response_schema: dict[str, Any] | None = Field(
        None, description="JSON schema sent as response_format (structured output) when set."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Fields merged into the request body as they are."
    )
    harmony: bool = Field(False, description="Unsplit output may be Harmony (gpt-oss).")
    reasoning_api: bool = Field(
        False,
        description="OpenAI reasoning models (GPT-5 family): send max_completion_tokens, and "
        "no temperature or seed, which they reject.",
    )

    @property
    def max_chars(self) -> int:
        """Characters one answer may hold before it is cut (`MAX_CHARS_PER_TOKEN`)."""
        return max(self.max_tokens * MAX_CHARS_PER_TOKEN, MIN_ANSWER_CHARS)

    @property
    def deadline(self) -> float:
        """Total seconds one attempt may take, however steadily output arrives."""
        return self.timeout + self.max_tokens / self.min_tokens_per_s


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay after failed attempt `attempt` (1-based): capped exponential, equal jitter."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """`awaitable` under a deadline (TimeoutError past it) that never loses a cancellation.

    `asyncio.wait_for` before Python 3.12 returns the inner result when the task is cancelled
    in the same loop turn as the inner call finishes (CPython gh-86296): a Ctrl-C that came as
    a 429 arrived was swallowed, and the run slept out the server's retry-after instead of
    stopping (seen in CI). `asyncio.timeout` (3.11+) counts cancellations and keeps it.
    """
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with timeout(seconds):
        return await awaitable


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

    __slots__ = (
        "chunks",
        "text",
        "reasoning",
        "usage",
        "finish_reason",
        "tokens",
        "stats",
        "chars",
        "max_chars",
        "capped",
    )

    def __init__(self, stats: TransportStats, max_chars: int) -> None:
        self.chunks = 0
        self.tokens = 0
        self.chars = 0
        self.max_chars = max_chars
        self.capped = False  # more arrived than max_chars: the rest was read but not kept
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.stats = stats

    def _take(self, content: str | None, thought: str | None) -> None:
        """Add text and reasoning, up to `max_chars` together; the rest is counted, not kept
        (reading on keeps the usage and finish reason that come last)."""
        for piece, into in ((thought, self.reasoning), (content, self.text)):
            if not piece:
                continue
            room = self.max_chars - self.chars
            if room > 0:
                into.append(piece[:room])
                self.chars += min(len(piece), room)
            self.capped = self.capped or len(piece) > room
        if content or thought:
            self.tokens += 1
            self.stats.tokens += 1
            self.stats.last_token_at = time.monotonic()

    def add_chunk(self, data: Any) -> None:
        """One stream event, as the JSON the server sent (see `_stream`), validated here."""
        chunk = parse_chunk(data)
        self.chunks += 1
        self.stats.chunks += 1
        if chunk.usage is not None:
            self.usage = chunk.usage.counts()
        for choice in chunk.choices:
            self._take(choice.delta.content, choice.delta.thought)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def set_body(self, raw: bytes) -> None:
        """A 200 that is not an event stream: one JSON completion, or a failed attempt."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            head = raw[:80].decode(errors="replace")
            raise _Malformed(
                f"HTTP 200 but the body is not valid JSON ({exc}; starts {head!r})"
            ) from None
        if not isinstance(data, dict) or "choices" not in data:
            head = raw[:80].decode(errors="replace")
            raise _Malformed(f"HTTP 200 but the body is not a chat completion ({head!r})")
        completion = parse_completion(data)
        self.chunks = 1
        self.stats.chunks += 1
        if completion.usage is not None:
            self.usage = completion.usage.counts()
        choice = completion.choices[0]
        self.finish_reason = choice.finish_reason
        self._take(choice.message.content, choice.message.thought)
        self.tokens = int(self.usage.get("completion_tokens", self.tokens))

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
            # an answer cut here stopped for length, whatever the server said
            finish_reason="length" if self.capped else self.finish_reason,
        )


async def post_stream(
    client: openai.AsyncOpenAI, body: dict[str, Any]
) -> openai.AsyncStream[object]:
    """POST /chat/completions streamed through the SDK's request path, each event left as the
    JSON object the server sent (no typed chunk built per token)."""
    return await client.post(
        "/chat/completions",
        cast_to=object,
        body=body,
        stream=True,
        stream_cls=openai.AsyncStream[object],
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
        self.endpoint, url_secrets = split_url_secrets(self.endpoint)
        self._secrets = [api_key, *url_secrets]
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
        args: dict[str, Any] = {"model": cfg.model, "messages": messages}
        if cfg.reasoning_api:  # OpenAI's reasoning models answer 400 to the older fields
            args["max_completion_tokens"] = cfg.max_tokens
        else:
            args["temperature"] = cfg.temperature
            args["max_tokens"] = cfg.max_tokens
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
        # The SDK's own request path (auth, errors, timeouts, SSE decoding), but bodies and
        # events stay the JSON the server sent, validated by `wire`: building a typed chunk
        # per token costs ~0.1 ms of CPU, which at thousands of tokens/s across concurrent
        # requests would be the bottleneck.
        body = {k: v for k, v in args.items() if k != "extra_body"} | args.get("extra_body", {})
        if not self.config.stream:
            response = await self._client.post(
                "/chat/completions", cast_to=httpx.Response, body=body
            )
            answer.set_body(response.content)
            return
        stream = await post_stream(self._client, body)
        async with stream:
            if "text/event-stream" not in stream.response.headers.get("content-type", ""):
                answer.set_body(await stream.response.aread())
                return
            async for chunk in stream:
                answer.add_chunk(chunk)
        if answer.chunks and answer.finish_reason is None:
            # a server, proxy or connection that ended the stream before the answer did:
            # no finish_reason (and no [DONE], which the SDK swallows) means unfinished
            raise _Unfinished(
                f"the stream ended after {answer.chunks} events without a finish_reason "
                "(cut off before the answer was finished)"
            )

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
            answer = _Answer(self.stats, cfg.max_chars)
            status: int | None = None
            retry_after: float | None = None
            idle_no_stream = False
            began = time.monotonic()
            try:
                await within(self._attempt(args, answer), cfg.deadline)
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
                error = f"HTTP {status}: {error_detail(exc.body) or exc.message}"
                if status not in RETRY_STATUS and status < 500:
                    raise self._error(
                        error, status, attempt, answer, start, retryable=False
                    ) from None
                retry_after = retry_after_seconds(exc.response.headers)
            except openai.APIConnectionError as exc:
                error = f"connection failed ({exc.__cause__ or exc})"
            except openai.APIError as exc:  # an error event inside the stream
                error = f"stream error: {exc.message}"
            except _Unfinished as exc:
                error = f"unfinished stream: {exc}"
            except (openai.OpenAIError, ValueError) as exc:
                # an HTTP 200 that is no answer (`_Malformed`), JSON of the wrong shape
                # (`WireError`), a stream event that is not JSON, a body the SDK cannot
                # read: a failed attempt like any other
                if isinstance(exc, _Malformed | WireError):
                    detail = str(exc)
                elif isinstance(exc, ValueError):
                    detail = f"a stream event is not valid JSON ({exc})"
                else:
                    detail = f"{type(exc).__name__}: {exc}"
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
        self,
        message: str,
        status: int | None,
        attempts: int,
        answer: _Answer,
        start: float,
        *,
        retryable: bool = True,
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
            retryable=retryable,
        )

    async def aclose(self) -> None:
        await self._client.close()
