"""What every backend returns, and the secret-scrubbing every error message goes through.

Design decisions
- A backend answers one chat request at a time (`complete`, async); the runner owns
  concurrency, parsing and the parse retry, so transports stay small. The vLLM offline
  engine, which wants the whole batch at once, implements `complete_batch` instead.
- Transport failures raise `TransportError` with a one-line message that has passed through
  `redact`, so an API key echoed back by a proxy or embedded in a URL never reaches results,
  logs or the terminal. It carries whatever output had arrived (`partial`), which the row
  keeps for diagnosis, and whether sending the same request again can help (`retryable`:
  not for a 4xx other than 408/409/429, which the server will refuse again).
- Secrets are stripped where they are read (`read_api_key`: a key file saved with CRLF leaves
  a `\r` that would otherwise travel into headers and error messages) and redacted in every
  form a message can carry them: raw, JSON- or repr-escaped, URL-quoted, after `Bearer`, as a
  URL's user info, and as the value of a secret-looking query parameter (`?api-key=...`).
  `split_url_secrets` gives the URL to record (query secrets masked) and the secrets to redact.
- `TransportStats` is the live view of a backend (requests in flight, tokens streamed, what
  the run is waiting for); the progress bar reads it, nothing else depends on it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, quote_plus, unquote_plus

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
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.partial = partial  # output received before the failure, if any
        self.retryable = retryable  # False: the server refused this request as it is


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
_BEARER = re.compile(r"\b(Bearer|Basic)(\s+|%20|\+)[^\s\"',;}\]\\]+", re.IGNORECASE)
#: query parameters whose value is a credential (Azure `api-key`, `key`, `token`, signatures)
SECRET_PARAM = re.compile(
    r"^(api[-_]?key|key|token|access[-_]?token|secret|password|passwd|sig|signature|auth"
    r"|code|credential)s?$",
    re.IGNORECASE,
)
_QUERY_PARAM = re.compile(r"([?&;])([A-Za-z0-9_.\-]+)=([^&#\s\"'<>]*)")


def read_api_key(env_name: str) -> str | None:
    """The key in `env_name`, without surrounding whitespace (a CRLF key file's `\r`)."""
    return os.environ.get(env_name, "").strip() or None


def secret_forms(secret: str) -> list[str]:
    """Every spelling of `secret` a message can carry, longest first."""
    forms = {secret, secret.strip()}
    for s in list(forms):
        forms |= {json.dumps(s)[1:-1], repr(s)[1:-1], quote(s, safe=""), quote_plus(s)}
    return sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)


def split_url_secrets(url: str) -> tuple[str, list[str]]:
    """(the URL with secret query values masked, those values): what may be recorded."""
    found: list[str] = []

    def mask(m: re.Match[str]) -> str:
        if SECRET_PARAM.match(m.group(2)) and m.group(3):
            found.append(unquote_plus(m.group(3)))
            found.append(m.group(3))
            return f"{m.group(1)}{m.group(2)}=***"
        return m.group(0)

    masked = _QUERY_PARAM.sub(mask, url)
    user = _URL_USERINFO.search(masked)
    if user:
        found.append(unquote_plus(user.group(0)[:-1]))
    return _URL_USERINFO.sub("***@", masked), found


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret (in every form) replaced by `***`, and credentials in URLs,
    query strings and `Bearer` headers removed."""
    for secret in secrets:
        if secret:
            for form in secret_forms(secret):
                text = text.replace(form, "***")
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return split_url_secrets(text)[0]


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
