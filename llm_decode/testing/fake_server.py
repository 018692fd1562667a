"""A scripted OpenAI-compatible chat server for tests and the benchmark (stdlib only).

Run as a process: `python -m llm_decode.testing.fake_server --config '{"delay": 0.05}'`; it
prints `listening on http://127.0.0.1:PORT/v1` once ready. `FakeServer` does that for you.

Behaviours (all in `ServerConfig`):
- the answer is a scene derived from the query codes (the last `Codes:` line of the last
  user message): looked up in `answers` (codes joined by spaces -> scene object) when given,
  else a deterministic scene made from the codes;
- `invalid_first` invalid answers per distinct query before a valid one;
- `status_script`: the status of the first requests in arrival order (0 = answer normally),
  with `retry_after` on 429s;
- `delay` before every answer; `slow_first` requests sleep `slow_delay` (client timeouts);
- `die_after`: after that many answers the process exits without answering the next request;
- `reasoning`: return reasoning in `reasoning`, `reasoning_content`, or as a `<think>` block;
  `reasoning_tokens` words of it (default: one sentence);
- streaming (`"stream": true` in the request): server-sent events, one chunk per word of
  reasoning and answer, paced at `stream_rate` chunks per second (the slow-streaming mode:
  a reasoning model at 50 tokens/s), usage in a last chunk when `stream_options` asks;
  `stall_first` streams stall after `stall_after` chunks for `slow_delay` seconds;
- `junk_first`: the first requests get HTTP 200 with a body that is no completion
  (`junk_body` as `junk_type`: an HTML page by default, or cut-off JSON);
- `require_key`: answer 401 unless `Authorization: Bearer <key>` matches; `echo_auth` puts
  the received header into error bodies (a leaky proxy), to test that keys are redacted;
- `cut_first`: the first N streams end early after `cut_after` chunks, without a
  `finish_reason` or `[DONE]`: `cut_mode` "clean" closes the stream properly, "mid_event"
  sends half an event first (a proxy or server that died mid-answer);
- `bad_types_first`: the first N answers are HTTP 200 with a field of the wrong type
  (`bad_types`: "usage_list", "content_int" or "choices_object"), streamed or not;
- `pad_answer`: characters of padding (one long word) appended to every answer (a server that ignores
  `max_tokens`);
- `context_limit`: answer 400 with `transformers serve`'s message when the prompt's words
  plus `max_tokens` exceed it;
- `reject_legacy_sampling`: answer OpenAI's exact 400 to `max_tokens` and to a non-default
  `temperature`, as its reasoning models (GPT-5 family) do;
- `replicas`: serve GET /metrics as a vLLM server of that many data-parallel engines does
  (none by default: a server without the endpoint);
- GET /stats: requests, answered, max_in_flight, statuses, auth failures, the last request's
  sampling fields (without messages), response_format presence.
HTTP/1.1 keep-alive is on, as in real servers, so the benchmark measures the client, not
connection set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class _State:
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


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    cfg = state.config

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in two writes; with Nagle on, the client's delayed ACK
        # would add ~40 ms to every answer and swamp what the benchmark measures
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            with state.lock:
                state.statuses[str(status)] = state.statuses.get(str(status), 0) + 1

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/stats"):
                with state.lock:
                    stats = _stats(state)
                self._send(200, stats)
            elif self.path == "/metrics" and cfg.replicas is not None:
                data = _metrics(cfg.replicas).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            with state.lock:
                state.requests += 1
                number = state.requests
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                self._chat(body, number)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _chat(self, body: dict[str, Any], number: int) -> None:
            if cfg.require_key is not None:
                if self.headers.get("Authorization") != f"Bearer {cfg.require_key}":
                    with state.lock:
                        state.auth_failures += 1
                    refusal = "invalid api key"
                    if cfg.echo_auth:
                        refusal += f" {self.headers.get('Authorization')}"
                    self._send(401, {"error": {"message": refusal, "type": "auth"}})
                    return
            with state.lock:
                state.last_request = {k: v for k, v in body.items() if k != "messages"}
                chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
                state.bodies.append({**state.last_request, "chars": chars})
                state.response_formats += "response_format" in body
            if cfg.reject_legacy_sampling and self._reject_legacy(body):
                return
            if cfg.context_limit is not None:
                words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
                wanted = words + int(body.get("max_tokens") or 0)
                if wanted > cfg.context_limit:
                    detail = (
                        f"The prompt has {words} tokens, but the model takes at most "
                        f"{cfg.context_limit} tokens (max_tokens {body.get('max_tokens')})"
                    )
                    self._send(400, {"detail": detail})
                    return
            if number <= len(cfg.status_script) and cfg.status_script[number - 1]:
                status = cfg.status_script[number - 1]
                headers = {}
                if status == 429 and cfg.retry_after is not None:
                    headers["Retry-After"] = f"{cfg.retry_after:g}"
                scripted = f"scripted {status}"
                if cfg.echo_auth:
                    scripted += f" (auth {self.headers.get('Authorization')})"
                self._send(status, {"error": {"message": scripted, "code": status}}, headers)
                return
            if number <= cfg.junk_first:
                data = cfg.junk_body.encode()
                self.send_response(200)
                self.send_header("Content-Type", cfg.junk_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with state.lock:
                    state.statuses["200"] = state.statuses.get("200", 0) + 1
                return
            if number <= cfg.slow_first:
                time.sleep(cfg.slow_delay)
            if cfg.delay:
                time.sleep(cfg.delay)
            with state.lock:
                if cfg.die_after is not None and state.admitted >= cfg.die_after:
                    os._exit(3)  # die mid-run: no answer, connections dropped
                state.admitted += 1
            codes = _query_codes(body.get("messages") or [])
            query = " ".join(map(str, codes))
            with state.lock:
                seen = state.per_query.get(query, 0)
                state.per_query[query] = seen + 1
            if seen < cfg.invalid_first:
                content = "Here is the scene: {objects: [oops"
            else:
                scene = cfg.answers.get(query) or derived_scene(codes)
                content = json.dumps(scene)
            content += " " + "~" * cfg.pad_answer if cfg.pad_answer else ""
            thought = (
                " ".join(f"step{i}" for i in range(cfg.reasoning_tokens))
                if cfg.reasoning_tokens
                else f"I looked at {len(codes)} codes."
            )
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if cfg.reasoning in ("reasoning", "reasoning_content"):
                message[cfg.reasoning] = thought
            elif cfg.reasoning == "think":
                message["content"] = f"<think>{thought}</think>\n{content}"
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            with state.lock:
                bad = number <= cfg.bad_types_first
                state.bad_types += bad
            if bad and not body.get("stream"):
                self._send(200, _bad_completion(cfg.bad_types, body, number))
                return
            if body.get("stream"):
                self._stream(body, number, message, prompt_tokens)
                return
            completion_tokens = len(_words(content)) + (
                len(_words(thought)) if cfg.reasoning else 0
            )
            if cfg.stream_rate:  # a server that generates at that rate but sends at the end
                time.sleep(completion_tokens / cfg.stream_rate)
            with state.lock:
                state.answered += 1
            self._send(
                200,
                {
                    "id": f"chatcmpl-{number}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
            )

        def _reject_legacy(self, body: dict[str, Any]) -> bool:
            """OpenAI's answer to its reasoning models' unsupported parameters (verbatim)."""
            if "max_tokens" in body:
                message = (
                    "Unsupported parameter: 'max_tokens' is not supported with this model. "
                    "Use 'max_completion_tokens' instead."
                )
                param = "max_tokens"
            elif "temperature" in body and body["temperature"] != 1:
                message = (
                    "Unsupported value: 'temperature' does not support "
                    f"{body['temperature']} with this model. Only the default (1) value is "
                    "supported."
                )
                param = "temperature"
            else:
                return False
            error = {"message": message, "type": "invalid_request_error", "param": param}
            error["code"] = (
                "unsupported_parameter" if param == "max_tokens" else "unsupported_value"
            )
            self._send(400, {"error": error})
            return True

        def _stream(
            self, body: dict[str, Any], number: int, message: dict[str, Any], prompt_tokens: int
        ) -> None:
            """Server-sent events in HTTP/1.1 chunked encoding (keep-alive, like real servers)."""
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
            for field in ("reasoning", "reasoning_content"):
                if field in message:
                    deltas += [{field: w} for w in _words(message[field])]
            deltas += [{"content": w} for w in _words(message["content"])]
            base = {
                "id": f"chatcmpl-{number}",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", ""),
            }
            with state.lock:
                state.streams += 1
                stall = state.streams <= cfg.stall_first
                cut = state.streams <= cfg.cut_first
                state.cuts += cut
                bad = number <= cfg.bad_types_first
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with state.lock:
                state.statuses["200"] = state.statuses.get("200", 0) + 1
            pause = 1.0 / cfg.stream_rate if cfg.stream_rate else 0.0
            try:
                for i, delta in enumerate(deltas):
                    if stall and i == cfg.stall_after:
                        with state.lock:
                            state.stalls += 1
                        time.sleep(cfg.slow_delay)
                    if pause and i:
                        time.sleep(pause)
                    if cut and i == cfg.cut_after:
                        if cfg.cut_mode == "mid_event":
                            self._chunk(b'data: {"id": "chatcmpl-cut", "choi')
                        self._chunk(b"")
                        return
                    if bad:
                        self._event(_bad_completion(cfg.bad_types, body, number))
                        continue
                    self._event({**base, "choices": [{"index": 0, "delta": delta}]})
                self._event(
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                )
                if (body.get("stream_options") or {}).get("include_usage"):
                    tokens = len(deltas) - 1
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": tokens,
                        "total_tokens": prompt_tokens + tokens,
                    }
                    self._event({**base, "choices": [], "usage": usage})
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
                with state.lock:
                    state.answered += 1
            except (BrokenPipeError, ConnectionResetError):
                with state.lock:
                    state.disconnects += 1
                self.close_connection = True

        def _event(self, data: dict[str, Any]) -> None:
            self._chunk(b"data: " + json.dumps(data).encode() + b"\n\n")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    return Handler


def _bad_completion(kind: str, body: dict[str, Any], number: int) -> dict[str, Any]:
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


def _words(text: str) -> list[str]:
    """Text in word-sized pieces that concatenate back to it (one streamed "token" each)."""
    return re.findall(r"\s*\S+", text) or [text]


def _query_codes(messages: list[dict[str, Any]]) -> list[int]:
    for message in reversed(messages):
        if message.get("role") == "user":
            found = _CODES.findall(str(message.get("content", "")))
            if found:
                return [int(c) for c in found[-1].split()]
    return []


def _metrics(replicas: int) -> str:
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


def _stats(state: _State) -> dict[str, Any]:
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


class _Server(ThreadingHTTPServer):
    # the listen backlog of real servers (uvicorn: 2048), not socketserver's 5: with more
    # clients connecting at once than the backlog holds, a SYN is dropped and retried after a
    # second, and the client's concurrency would not reach the server
    request_queue_size = 128


def serve(config: ServerConfig, port: int = 0) -> None:
    """Serve forever on 127.0.0.1 (port 0: any free port), announcing the URL on stdout."""
    server = _Server(("127.0.0.1", port), _handler(_State(config)))
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


class FakeServer:
    """The server as a child process: `with FakeServer(delay=0.1) as s: s.base_url, s.stats()`."""

    def __init__(self, port: int = 0, **config: Any) -> None:
        self.port = port
        self.config = ServerConfig(**config)
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def start(self, timeout: float = 20.0) -> FakeServer:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llm_decode.testing.fake_server",
                "--config",
                self.config.model_dump_json(),
                "--port",
                str(self.port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"fake server did not start (said {line!r})")
        self.base_url = line.split()[-1]
        return self

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=5) as response:
            return json.loads(response.read())

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="{}", help="ServerConfig as JSON.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve(ServerConfig.model_validate_json(args.config), args.port)


if __name__ == "__main__":
    main()
