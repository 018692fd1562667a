"""What every backend returns, and the secret-scrubbing every error message goes through.

Design decisions
- A backend answers one chat request at a time (`complete`, async); the runner owns
  concurrency, parsing and the parse retry, so transports stay small. The vLLM offline
  engine, which wants the whole batch at once, implements `complete_batch` instead.
- Transport failures raise `TransportError` with a one-line message that has passed through
  `redact`, so an API key echoed back by a proxy or embedded in a URL never reaches results,
  logs or the terminal. It carries whatever output had arrived (`partial`), which the row
  keeps for diagnosis.
- `TransportStats` is the live view of a backend (requests in flight, tokens streamed, what
  the run is waiting for); the progress bar reads it, nothing else depends on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]


@dataclass
class Completion:
    """One answer: the text the model returned, its reasoning, and transport facts."""

    text: str
    reasoning: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    latency_s: float = 0.0
    attempts: int = 1
    finish_reason: str | None = None
    partial: bool = False  # cut off by a transport failure (kept for diagnosis only)


class TransportError(RuntimeError):
    """A request that failed for good (not retryable, or out of attempts). One line."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 1,
        partial: Completion | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.partial = partial  # output received before the failure, if any


@dataclass
class TransportStats:
    """Live counters a backend updates and a progress display reads (single event loop)."""

    in_flight: int = 0
    chunks: int = 0  # stream events received (one per response when not streaming)
    tokens: int = 0  # completion tokens streamed so far (chunks; usage where no stream)
    last_token_at: float = 0.0  # time.monotonic() of the latest token
    retries: int = 0
    long_timeouts: int = 0  # attempts that timed out after output had started (or no stream)
    waiting: str = ""  # what the run waits for, when every worker is waiting on one thing
    last_event: str = ""  # the latest retry or timeout, one line


class BackendError(RuntimeError):
    """A backend that cannot be built (missing package, bad option). One line."""


@runtime_checkable
class Backend(Protocol):
    #: identity of the endpoint for the results key (base URL, or the backend name).
    endpoint: str

    async def complete(self, messages: list[Message], codes: Sequence[int]) -> Completion: ...

    async def aclose(self) -> None: ...


_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret replaced by `***` and URL credentials removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URL_USERINFO.sub("***@", text)


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
