"""Querying: the requests of a run through a backend, with bounded concurrency and parse
retries, each ending as one row.

- Requests are fed from a queue to `concurrency` worker tasks, so exactly that many are in
  flight while work remains, however uneven the latencies. A worker keeps its slot through
  the parse retry, so the retry does not jump the queue.
- An exception a worker did not expect is one `error` row, never the end of the run.
- The offline engine gets `batch_size` requests at a time and each batch's rows are written
  before the next batch starts; an engine error stops the run with one line, after them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_decode.backends.base import Backend, BackendError, Completion, TransportError, one_line
from llm_decode.backends.replicas import server_replicas
from llm_decode.decode_config import DecodeConfig
from llm_decode.presets import PER_REPLICA_CONCURRENCY
from llm_decode.prompting import PromptBuilder
from llm_decode.results import messages_sha256
from llm_decode.schema import DecodedScene, SceneParseError, parse_answer
from llm_decode.scoring import ScoringOptions, score_scene


@dataclass
class Job:
    index: int  # position in the test set
    row: int  # row of programs.parquet
    image_id: str
    codes: list[int]  # as sent (permuted under the control)
    truth: Any  # DecodedScene for decode; the task's own answer model otherwise
    messages: list[dict[str, str]]
    key: str
    # How an answer is read and scored: the scene's by default; `strop-llm qa` gives its own.
    parse: Callable[[str], Any] = parse_answer
    score: Callable[[Any, Any, ScoringOptions | None], dict[str, Any]] | None = None


RowHook = Callable[[dict[str, Any]], None]


@dataclass
class Outcome:
    """One request's end: every attempt's completion, the parse error or transport error."""

    completions: list[Completion]
    error: str | None = None
    scene: DecodedScene | None = None
    transport_failed: bool = False
    retryable: bool = True  # for a transport failure: can sending it again help?


async def _answer(backend: Backend, builder: PromptBuilder, job: Job, retries: int) -> Outcome:
    """Query with up to `retries` parse retries.

    On a transport failure the completions end with the partial output that had arrived, if
    any. A repair turn the server refuses as it is (a 4xx: the echoed answer overflowed the
    context, typically) ends the row as the parse failure it already was, with the server's
    reason: sending it again cannot help.
    """
    messages = job.messages
    completions: list[Completion] = []
    error: str | None = None
    for _ in range(retries + 1):
        try:
            completion = await backend.complete(messages, job.codes)
        except TransportError as exc:
            if exc.partial is not None:
                exc.partial.attempts = exc.attempts
                completions.append(exc.partial)
            else:  # nothing arrived: count the attempts all the same
                completions.append(Completion(text="", attempts=exc.attempts, partial=True))
            if error is not None and not exc.retryable:
                return Outcome(completions, f"{error}; repair turn refused: {exc}")
            return Outcome(completions, str(exc), transport_failed=True, retryable=exc.retryable)
        completions.append(completion)
        try:
            return Outcome(completions, None, job.parse(completion.text))
        except SceneParseError as exc:
            error = str(exc)
            messages = builder.repair_messages(job.messages, completion.text, error) or job.messages
    return Outcome(completions, error)


def _row(
    job: Job,
    identity: dict[str, Any],
    outcome: Outcome,
    started: float,
    scoring: ScoringOptions | None = None,
) -> dict[str, Any]:
    completions, error, scene = outcome.completions, outcome.error, outcome.scene
    transport_failed = outcome.transport_failed
    answers = [c for c in completions if c.text or c.reasoning or not c.partial]
    last = answers[-1] if answers else None  # a failure before any output adds attempts only
    usage: dict[str, int] = {}
    for c in completions:
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if isinstance(c.usage.get(name), int):
                usage[name] = usage.get(name, 0) + c.usage[name]
    status = "error" if transport_failed else ("ok" if scene is not None else "parse_fail")
    return {
        "key": job.key,
        "index": job.index,
        "row": job.row,
        "image_id": job.image_id,
        **identity,
        "prompt_sha256": messages_sha256(job.messages),
        "status": status,
        "error": error,
        "retryable": outcome.retryable if transport_failed else None,
        "response": last.text if last else None,
        "reasoning": last.reasoning if last else None,
        "partial": bool(last and last.partial),  # output cut off by a transport failure
        "finish_reason": last.finish_reason if last else None,
        "usage": usage,
        "latency_s": round(time.perf_counter() - started, 4),
        "attempts": sum(c.attempts for c in completions),
        "parse_attempts": sum(not c.partial for c in completions),
        # every request's answer in order (the last is `response`): what each turn said
        "answers": [
            {
                "text": c.text,
                "reasoning": c.reasoning or None,
                "finish_reason": c.finish_reason,
                "partial": c.partial,
            }
            for c in answers
        ],
        "codes": job.codes,
        "parsed": scene.model_dump() if scene is not None else None,
        "truth": job.truth.model_dump(),
        "scores": _score(job, scene, scoring) if scene is not None else None,
        "time": time.time(),
    }


def concurrency(cfg: DecodeConfig) -> int:
    """Requests to keep in flight: `--concurrency`, else `PER_REPLICA_CONCURRENCY` for each
    copy of the model the server runs (`llm_decode.backends.replicas`), so a data-parallel
    server has work for every copy."""
    if cfg.concurrency is not None:
        return cfg.concurrency
    replicas = server_replicas(cfg.base_url) if cfg.backend == "openai" else None
    return PER_REPLICA_CONCURRENCY * (replicas or 1)


def _score(job: Job, answer: Any, scoring: ScoringOptions | None) -> dict[str, Any]:
    if job.score is not None:
        return job.score(answer, job.truth, scoring)
    return score_scene(answer, job.truth, scoring).to_dict()


@dataclass(frozen=True)
class Requests:
    """What a run sends and where its rows go: the jobs left to answer, the prompt builder
    (for repair turns), the config, the identity copied into each row, the row hook."""

    todo: list[Job]
    builder: PromptBuilder
    cfg: DecodeConfig
    identity: dict[str, Any]
    record: RowHook


async def run_concurrent(backend: Backend, requests: Requests) -> None:
    """`concurrency(cfg)` workers take jobs from one queue, each row recorded as it ends."""
    cfg, todo = requests.cfg, requests.todo
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in todo:
        queue.put_nowait(job)

    async def worker() -> None:
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                outcome = await _answer(backend, requests.builder, job, cfg.protocol.parse_retries)
            except Exception as exc:  # a bug or a backend surprise: one bad row, never the run
                message = one_line(f"internal error: {type(exc).__name__}: {exc}")
                outcome = Outcome([], message, transport_failed=True)
            requests.record(_row(job, requests.identity, outcome, started, cfg.scoring))

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency(cfg), len(todo)))))
    finally:
        await backend.aclose()


async def run_batches(backend: Any, requests: Requests) -> None:
    """The offline engine: `batch_size` jobs at a time, rows written after each batch."""
    todo = requests.todo
    size = int(getattr(backend, "batch_size", 0)) or len(todo)
    done = 0
    try:
        for first in range(0, len(todo), size):
            batch = todo[first : first + size]
            try:
                rows = await _answer_batch(backend, requests, batch)
            except Exception as exc:  # the engine: CUDA errors, OOM, a dead worker ...
                raise BackendError(
                    one_line(
                        f"vLLM engine failed on requests {first + 1}-{first + len(batch)} of "
                        f"{len(todo)}: {type(exc).__name__}: {exc}; {done} answers saved, "
                        "rerun the same command to resume"
                    )
                ) from None
            for row in rows:
                requests.record(row)
            done += len(rows)
    finally:
        await backend.aclose()


async def _answer_batch(backend: Any, requests: Requests, batch: list[Job]) -> list[dict[str, Any]]:
    """One batch through the engine, then one engine call per parse retry: its rows."""
    builder, cfg, identity = requests.builder, requests.cfg, requests.identity
    started = time.perf_counter()
    history: dict[str, list[Completion]] = {j.key: [] for j in batch}
    pending = {j.key: j.messages for j in batch}
    errors: dict[str, str] = {}
    scenes: dict[str, DecodedScene] = {}
    by_key = {j.key: j for j in batch}
    for _ in range(cfg.protocol.parse_retries + 1):
        if not pending:
            break
        keys = list(pending)
        completions = await asyncio.to_thread(backend.complete_batch, [pending[k] for k in keys])
        pending = {}
        for key, completion in zip(keys, completions, strict=True):
            history[key].append(completion)
            try:
                scenes[key] = by_key[key].parse(completion.text)
            except SceneParseError as exc:
                errors[key] = str(exc)
                job = by_key[key]
                pending[key] = (
                    builder.repair_messages(job.messages, completion.text, str(exc)) or job.messages
                )
    return [
        _row(
            job,
            identity,
            Outcome(
                history[job.key],
                None if job.key in scenes else errors.get(job.key),
                scenes.get(job.key),
            ),
            started,
            cfg.scoring,
        )
        for job in batch
    ]
