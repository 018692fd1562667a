"""What the scripted chat server (`llm_decode.testing.fake_server`) answers: its configuration
(`ServerConfig`, the behaviours listed there), the scene it derives from a query's codes, its
counters (`State`, GET /stats) and the pieces of its answers (words, a bad completion, vLLM's
/metrics page). Stdlib and pydantic only.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_CODES = re.compile(r"Codes:\s*([0-9][0-9 ]*)")
_COLORS = ("gr", "r", "bl", "gn", "br", "pr", "cy", "y")


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay: float = 0.0
    replicas: int | None = None  # GET /metrics as vLLM with --data-parallel-size this
    answers: dict[str, Any] = Field(default_factory=dict)
    invalid_first: int = 0
    status_script: list[int] = Field(default_factory=list)
    retry_after: float | None = None
    slow_first: int = 0
    slow_delay: float = 5.0
    die_after: int | None = None
    reasoning: str | None = None  # "reasoning" | "reasoning_content" | "think"
    reasoning_tokens: int = 0  # words of reasoning (0: one short sentence)
    stream_rate: float | None = None  # streamed chunks per second (None: as fast as possible)
    stall_first: int = 0  # the first N streams stall ...
    stall_after: int = 5  # ... after this many chunks, for slow_delay seconds
    require_key: str | None = None
    echo_auth: bool = False  # put the Authorization header in error bodies, as leaky proxies do
    # HTTP 200 with a body that is not a completion (a proxy's HTML page, a cut-off JSON): the
    # first `junk_first` requests get `junk_body` as `junk_type`
    junk_first: int = 0
    junk_type: str = "text/html"
    junk_body: str = "<html><body>502 Bad Gateway (from the proxy)</body></html>"
    cut_first: int = 0
    cut_after: int = 3
    cut_mode: str = "clean"  # "clean" | "mid_event"
    bad_types_first: int = 0
    bad_types: str = "content_int"  # "usage_list" | "content_int" | "choices_object"
    pad_answer: int = 0
    context_limit: int | None = None
    reject_legacy_sampling: bool = False


def derived_scene(codes: list[int]) -> dict[str, Any]:
    """A deterministic scene from codes: count from the length, attributes from the codes."""
    n = 3 + len(codes) % 8
    objects = []
    for i in range(n):
        c = codes[i % len(codes)] if codes else i
        objects.append(
            {
                "color": _COLORS[c % 8],
                "shape": ("cu", "sp", "cy")[c % 3],
                "size": ("S", "L")[c % 2],
                "material": ("R", "M")[(c // 2) % 2],
                "x": round(-3 + 6 * ((c * 37 + i * 11) % 100) / 99, 2),
                "y": round(-3 + 6 * ((c * 53 + i * 29) % 100) / 99, 2),
            }
        )
    return {"objects": objects}


class State:
    """The server's counters and per-query memory, shared by its handler threads."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.requests = 0
        self.answered = 0
        # answers begun: checked and counted under one lock, so that `die_after` concurrent
        # requests can never slip past the check together (two at answered = 4 both answering)
        self.admitted = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: dict[str, int] = {}
        self.auth_failures = 0
        self.per_query: dict[str, int] = {}
        self.last_request: dict[str, Any] = {}
        self.response_formats = 0
        self.streams = 0
        self.stalls = 0
        self.disconnects = 0  # streams the client closed before the end
        self.cuts = 0
        self.bad_types = 0
        self.bodies: list[dict[str, Any]] = []  # every request's fields except messages


def bad_completion(kind: str, body: dict[str, Any], number: int) -> dict[str, Any]:
    """A completion (or stream chunk) with one field of the wrong type."""
    key = "delta" if body.get("stream") else "message"
    choice: dict[str, Any] = {"index": 0, key: {"role": "assistant", "content": "{}"}}
    choice["finish_reason"] = "stop"
    data: dict[str, Any] = {"id": f"chatcmpl-{number}", "model": body.get("model", "")}
    if kind == "usage_list":
        data |= {"choices": [choice], "usage": [1, 2]}
    elif kind == "content_int":
        choice[key]["content"] = 12345
        data |= {"choices": [choice]}
    else:  # choices_object
        data |= {"choices": choice}
    return data


def words(text: str) -> list[str]:
    """Text in word-sized pieces that concatenate back to it (one streamed "token" each)."""
    return re.findall(r"\s*\S+", text) or [text]


def query_codes(messages: list[dict[str, Any]]) -> list[int]:
    for message in reversed(messages):
        if message.get("role") == "user":
            found = _CODES.findall(str(message.get("content", "")))
            if found:
                return [int(c) for c in found[-1].split()]
    return []


def metrics_page(replicas: int) -> str:
    """A Prometheus page as vLLM writes it for a server of `replicas` data-parallel engines
    (one `engine` label value per engine; `llm_decode.backends.replicas`)."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
    ]
    for engine in range(replicas):
        lines.append(f'vllm:num_requests_running{{engine="{engine}",model_name="fake"}} 0.0')
    for engine in range(replicas):
        lines.append(f'vllm:kv_cache_usage_perc{{engine="{engine}",model_name="fake"}} 0.0')
    lines.append('http_requests_total{handler="/v1/chat/completions",method="POST"} 1.0')
    return "\n".join(lines) + "\n"


def stats(state: State) -> dict[str, Any]:
    return {
        "requests": state.requests,
        "answered": state.answered,
        "in_flight": state.in_flight,
        "max_in_flight": state.max_in_flight,
        "statuses": dict(state.statuses),
        "auth_failures": state.auth_failures,
        "last_request": state.last_request,
        "response_formats": state.response_formats,
        "streams": state.streams,
        "stalls": state.stalls,
        "disconnects": state.disconnects,
        "cuts": state.cuts,
        "bad_types": state.bad_types,
        "bodies": list(state.bodies),
    }
