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
connection set-up. What it answers (the config, derived scenes, counters) is
`llm_decode.testing.fake_chat`; this module serves it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm_decode.testing.fake_chat import (
    ServerConfig,
    State,
    bad_completion,
    derived_scene,
    metrics_page,
    query_codes,
    stats,
    words,
)

#: importable from here as before
__all__ = ["FakeServer", "ServerConfig", "derived_scene", "serve"]


class ChatHandler(BaseHTTPRequestHandler):
    """The routes: GET /stats and /metrics, POST a chat completion. `handler_for(state)` makes
    the subclass that serves one server's `State`."""

    state: State
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes; with Nagle on, the client's delayed ACK
    # would add ~40 ms to every answer and swamp what the benchmark measures
    disable_nagle_algorithm = True

    @property
    def cfg(self) -> ServerConfig:
        return self.state.config

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _count(self, status: int) -> None:
        with self.state.lock:
            self.state.statuses[str(status)] = self.state.statuses.get(str(status), 0) + 1

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
        self._count(status)

    def _send_text(self, content_type: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/stats"):
            with self.state.lock:
                counts = stats(self.state)
            self._send(200, counts)
        elif self.path == "/metrics" and self.cfg.replicas is not None:
            self._send_text("text/plain; version=0.0.4", metrics_page(self.cfg.replicas).encode())
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        state = self.state
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
        """Refuse as scripted, else wait as scripted and answer (streamed or not)."""
        if not self._authorized():
            return
        self._record(body)
        if self._refused(body, number):
            return
        cfg, state = self.cfg, self.state
        if number <= cfg.slow_first:
            time.sleep(cfg.slow_delay)
        if cfg.delay:
            time.sleep(cfg.delay)
        with state.lock:
            if cfg.die_after is not None and state.admitted >= cfg.die_after:
                os._exit(3)  # die mid-run: no answer, connections dropped
            state.admitted += 1
        codes = query_codes(body.get("messages") or [])
        content, thought = self._content(codes), self._thought(codes)
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
            self._send(200, bad_completion(cfg.bad_types, body, number))
        elif body.get("stream"):
            self._stream(body, number, message, prompt_tokens)
        else:
            completion_tokens = len(words(content)) + (len(words(thought)) if cfg.reasoning else 0)
            self._complete(body, number, message, prompt_tokens, completion_tokens)

    def _authorized(self) -> bool:
        """False (after answering 401) when `require_key` is set and not the bearer's."""
        cfg = self.cfg
        if (
            cfg.require_key is None
            or self.headers.get("Authorization") == f"Bearer {cfg.require_key}"
        ):
            return True
        with self.state.lock:
            self.state.auth_failures += 1
        refusal = "invalid api key"
        if cfg.echo_auth:
            refusal += f" {self.headers.get('Authorization')}"
        self._send(401, {"error": {"message": refusal, "type": "auth"}})
        return False

    def _record(self, body: dict[str, Any]) -> None:
        """The request's fields (not its messages) for GET /stats."""
        state = self.state
        with state.lock:
            state.last_request = {k: v for k, v in body.items() if k != "messages"}
            chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
            state.bodies.append({**state.last_request, "chars": chars})
            state.response_formats += "response_format" in body

    def _refused(self, body: dict[str, Any], number: int) -> bool:
        """True after answering with a scripted refusal: legacy sampling, the context limit, a
        status from `status_script`, or a junk 200."""
        cfg = self.cfg
        if cfg.reject_legacy_sampling and self._reject_legacy(body):
            return True
        if cfg.context_limit is not None:
            n_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            wanted = n_words + int(body.get("max_tokens") or 0)
            if wanted > cfg.context_limit:
                detail = (
                    f"The prompt has {n_words} tokens, but the model takes at most "
                    f"{cfg.context_limit} tokens (max_tokens {body.get('max_tokens')})"
                )
                self._send(400, {"detail": detail})
                return True
        if number <= len(cfg.status_script) and cfg.status_script[number - 1]:
            status = cfg.status_script[number - 1]
            headers = {}
            if status == 429 and cfg.retry_after is not None:
                headers["Retry-After"] = f"{cfg.retry_after:g}"
            scripted = f"scripted {status}"
            if cfg.echo_auth:
                scripted += f" (auth {self.headers.get('Authorization')})"
            self._send(status, {"error": {"message": scripted, "code": status}}, headers)
            return True
        if number <= cfg.junk_first:
            self._send_text(cfg.junk_type, cfg.junk_body.encode())
            self._count(200)
            return True
        return False

    def _content(self, codes: list[int]) -> str:
        """The answer: `invalid_first` broken ones per query, then its scene (padded)."""
        query = " ".join(map(str, codes))
        with self.state.lock:
            seen = self.state.per_query.get(query, 0)
            self.state.per_query[query] = seen + 1
        if seen < self.cfg.invalid_first:
            content = "Here is the scene: {objects: [oops"
        else:
            content = json.dumps(self.cfg.answers.get(query) or derived_scene(codes))
        return content + " " + "~" * self.cfg.pad_answer if self.cfg.pad_answer else content

    def _thought(self, codes: list[int]) -> str:
        if self.cfg.reasoning_tokens:
            return " ".join(f"step{i}" for i in range(self.cfg.reasoning_tokens))
        return f"I looked at {len(codes)} codes."

    def _complete(
        self,
        body: dict[str, Any],
        number: int,
        message: dict[str, Any],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """The whole completion in one body."""
        if self.cfg.stream_rate:  # a server that generates at that rate but sends at the end
            time.sleep(completion_tokens / self.cfg.stream_rate)
        with self.state.lock:
            self.state.answered += 1
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
        error["code"] = "unsupported_parameter" if param == "max_tokens" else "unsupported_value"
        self._send(400, {"error": error})
        return True

    def _stream(
        self, body: dict[str, Any], number: int, message: dict[str, Any], prompt_tokens: int
    ) -> None:
        """Server-sent events in HTTP/1.1 chunked encoding (keep-alive, like real servers)."""
        cfg, state = self.cfg, self.state
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        for field in ("reasoning", "reasoning_content"):
            if field in message:
                deltas += [{field: w} for w in words(message[field])]
        deltas += [{"content": w} for w in words(message["content"])]
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
        self._count(200)
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
                    self._event(bad_completion(cfg.bad_types, body, number))
                    continue
                self._event({**base, "choices": [{"index": 0, "delta": delta}]})
            self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
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


def handler_for(state: State) -> type[ChatHandler]:
    """The handler class of one server: its requests share `state`."""
    return type("Handler", (ChatHandler,), {"state": state})


class _Server(ThreadingHTTPServer):
    # the listen backlog of real servers (uvicorn: 2048), not socketserver's 5: with more
    # clients connecting at once than the backlog holds, a SYN is dropped and retried after a
    # second, and the client's concurrency would not reach the server
    request_queue_size = 128


def serve(config: ServerConfig, port: int = 0) -> None:
    """Serve forever on 127.0.0.1 (port 0: any free port), announcing the URL on stdout."""
    server = _Server(("127.0.0.1", port), handler_for(State(config)))
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
