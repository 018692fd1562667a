"""`strop-llm decode`: select, prompt, query with bounded concurrency, parse, score, record.

The configuration is `llm_decode.decode_config`, the queue of workers and the rows they write
`llm_decode.querying`; both are importable from here as before.

Design decisions
- Everything a run depends on is one validated `DecodeConfig`; the CLI only builds it.
- Requests are fed from a queue to `concurrency` worker tasks, so exactly that many are in
  flight while work remains, however uneven the latencies. Unless given, it is 8 for each
  copy of the model the server runs (`--data-parallel-size`, counted from vLLM's
  `/metrics`), so every copy has work. A worker keeps its slot through
  the parse retry, so the retry does not jump the queue.
- The parse retry (one by default, as in the paper) sends the template's `repair` message
  after the failed answer (echoed back cut to 2,000 characters); a template without that
  block resends the original request. A repair turn the server refuses as it is (a 4xx:
  the echo overflowed the context) ends the row as the parse failure it already was, with
  the server's reason: no rerun could change it.
- Every answer is written the moment it arrives (`ResultsFile.append`), with every turn's
  answer (`answers`) and the prompt's hash (the prompt itself once in `prompts.jsonl`);
  transport failures are recorded as `error` rows (with whatever output had arrived,
  `partial: true`, and `retryable`) and retried by the next run; an exception a worker did
  not expect is one such row, never the end of the run. The summary is recomputed from the
  rows of this protocol's keys.
- Each protocol (shots, test set, seeds, sampling, thinking, template, scoring) has its own
  results folder (`output_folder`), so a run under another protocol never overwrites a
  summary or mixes rows. `--limit N` decodes the first N drawn images under the same keys,
  so a full run later reuses them.
- One writer per results folder: `decode` holds `strop.runs.RunLock` (the trainer's lock) on
  it from before the first request until the summary is written, so a second run into the
  same folder (decode or qa) is refused in one line naming the first one's pid.
- The offline engine gets `batch_size` requests at a time and each batch's rows are written
  before the next batch starts; an engine error stops the run with one line, after them.
- The server is `--base-url`, else `OPENAI_BASE_URL`, else vLLM's default local address, as
  the OpenAI SDK ecosystem expects; the key is read from `--api-key-env` (`OPENAI_API_KEY`).
- The request body beyond the OpenAI schema (`extra_body`) is the preset's thinking switch,
  then the card's sampling extras (`--card-sampling`), then `--extra-body`, later winning. It
  changes answers, so it is part of the request key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_decode.backends.base import TransportStats, read_api_key
from llm_decode.backends.vllm_offline import VLLMEngineOptions
from llm_decode.decode_config import (
    TEMPLATE_HELP,
    DecodeConfig,
    UsageError,
    check_config,
    parse_json_object,
)
from llm_decode.planning import Plan, output_folder, plan
from llm_decode.presets import ModelPreset
from llm_decode.querying import Job, Requests, RowHook, run_batches, run_concurrent
from llm_decode.results import ResultsFile
from llm_decode.schema import DecodedScene, scene_json_schema
from llm_decode.scoring import summarize_scores
from strop.provenance import stale_reason
from strop.runs import RunFolder, RunLock

#: importable from here as before: the CLI, `qa` and users build and check configs through `runner`
__all__ = [
    "DECODE",
    "TEMPLATE_HELP",
    "DecodeConfig",
    "DecodeInterrupted",
    "DecodeResult",
    "Job",
    "Plan",
    "RowHook",
    "Task",
    "UsageError",
    "check_config",
    "decode",
    "engine_options",
    "output_folder",
    "parse_json_object",
    "plan",
    "run_summary",
    "thinking_suppressed",
]

#: what to do instead of a second run into a results folder in use
RERUN_ADVICE = "stop it and run again: a rerun resumes it, sending only the unanswered requests"


class DecodeInterrupted(KeyboardInterrupt):
    """Ctrl-C during a decode: every answer received so far is saved; a rerun resumes."""

    def __init__(self, path: Path, saved: int, total: int) -> None:
        super().__init__(
            f"interrupted: {saved} of {total} answers saved in {path}; rerun the same command "
            "to resume"
        )
        self.path, self.saved, self.total = path, saved, total


@dataclass
class DecodeResult:
    folder: Path
    summary: dict[str, Any]
    sent: int  # requests answered or failed in this invocation (0 on a complete rerun)
    warnings: list[str] = field(default_factory=list)  # one line each, for the terminal


def _build_backend(cfg: DecodeConfig, p: Plan, stats: TransportStats) -> Any:
    schema = scene_json_schema() if cfg.structured else None
    if cfg.backend == "naive":
        from llm_decode.backends.baselines import NaiveBackend

        return NaiveBackend([s.scene for s in p.shots], seed=p.sampling_seed, definition=cfg.naive)
    if cfg.backend == "knn":
        from llm_decode.backends.baselines import KnnBackend

        return KnnBackend([s.codes for s in p.shots], [s.scene for s in p.shots], p.k)
    if cfg.backend == "vllm":
        from llm_decode.backends.vllm_offline import VLLMBackend

        sampling = {"temperature": p.temperature, **p.card_extras, **cfg.extra_body}
        return VLLMBackend.create(
            p.preset.served_id,
            options=engine_options(cfg.engine, p.preset),
            sampling=sampling,
            max_tokens=p.max_tokens,
            seed=p.sampling_seed,
            response_schema=schema,
            chat_template_kwargs=p.preset.chat_template_kwargs(p.think),
            harmony=p.preset.harmony,
        )
    from llm_decode.backends.openai_compat import OpenAIBackend, OpenAIConfig

    return OpenAIBackend(
        OpenAIConfig(
            base_url=cfg.base_url,
            model=p.preset.served_id,
            temperature=p.temperature,
            max_tokens=p.max_tokens,
            seed=p.sampling_seed,
            stream=cfg.stream,
            timeout=cfg.timeout,
            min_tokens_per_s=cfg.min_tokens_per_s,
            max_attempts=cfg.max_attempts,
            long_retries=cfg.long_retries,
            backoff_base=cfg.backoff_base,
            backoff_cap=cfg.backoff_cap,
            response_schema=schema,
            extra_body=p.extra_body,
            harmony=p.preset.harmony,
            reasoning_api=p.preset.reasoning_api,
        ),
        read_api_key(cfg.api_key_env),
        rng_seed=p.sampling_seed,
        stats=stats,
    )


def engine_options(options: VLLMEngineOptions, preset: ModelPreset) -> VLLMEngineOptions:
    """The offline engine's options: those given, else the preset's serving choices."""
    defaults: dict[str, Any] = {
        "tensor_parallel_size": preset.tensor_parallel_size,
        "reasoning_parser": preset.reasoning_parser,
    }
    given = options.model_dump(include=options.model_fields_set)
    return VLLMEngineOptions(**{**options.model_dump(), **defaults, **given})


def decode(
    cfg: DecodeConfig,
    on_row: RowHook | None = None,
    on_start: Callable[[int, int], None] | None = None,
    *,
    stats: TransportStats | None = None,
    backend: Any = None,
    task: Task | None = None,
) -> DecodeResult:
    """Run (or resume) one decoding experiment; returns the folder and the summary.

    `on_start(total, already_done)` is called once before any request, `on_row(row)` after
    each answer is written; `stats` is updated live by the HTTP backend (the progress bar
    reads it). `backend` replaces the one `cfg` would build (an engine built elsewhere, a
    stand-in in tests). `task` replaces what is run (`strop-llm qa`); default: scene decoding.
    """
    task = task or DECODE
    p = task.plan(cfg)
    folder = task.folder(p.run, cfg, p)
    # One writer per results folder, with the lock the trainer takes on its run folder: two
    # runs into one folder would each send every request and append conflicting rows, and
    # the summary would be whichever wrote last. Held until the summary is written.
    with RunLock(folder, user="strop-llm decode/qa run", instead=RERUN_ADVICE):
        return _decode_locked(cfg, p, task, folder, on_row, on_start, stats, backend)


def _decode_locked(
    cfg: DecodeConfig,
    p: Plan,
    task: Task,
    folder: Path,
    on_row: RowHook | None,
    on_start: Callable[[int, int], None] | None,
    stats: TransportStats | None,
    backend: Any,
) -> DecodeResult:
    results = ResultsFile(folder)
    todo = [j for j in p.jobs if j.key not in results.done]
    if on_start is not None:
        on_start(len(p.jobs), len(p.jobs) - len(todo))

    def record(row: dict[str, Any]) -> None:
        results.prompts.add(p.jobs_by_key[row["key"]].messages)
        results.append(row)
        if on_row is not None:
            on_row(row)

    try:
        if todo:
            if backend is None and task.backend is not None:
                backend = task.backend(cfg, p)
            if backend is None:
                backend = _build_backend(cfg, p, stats or TransportStats())
            runner = run_batches if hasattr(backend, "complete_batch") else run_concurrent
            asyncio.run(runner(backend, Requests(todo, p.builder, cfg, p.identity, record)))
    except KeyboardInterrupt:
        saved = sum(j.key in results.done for j in p.jobs)
        raise DecodeInterrupted(results.path, saved, len(p.jobs)) from None
    finally:
        results.close()
    rows = [results.done.get(j.key) for j in p.jobs]
    summary = task.summary(rows, cfg, p)
    # the programs may be of weights the run no longer holds (trained on since the export):
    # said in the summary (the report marks it) and on the terminal, never silently
    stale = stale_reason(p.weights, p.run.path, str(p.run.programs_path.name))
    summary.update(weights=p.weights, stale=stale)
    results.write_summary(summary)
    notes = (thinking_suppressed(cfg, p, rows), stale and f"stale: {stale}")
    warnings = [*results.warnings, *[w for w in notes if w]]
    return DecodeResult(folder=results.folder, summary=summary, sent=len(todo), warnings=warnings)


def thinking_suppressed(
    cfg: DecodeConfig, p: Plan, rows: list[dict[str, Any] | None]
) -> str | None:
    """A warning when thinking was asked for under structured output and none came back.

    A server without a reasoning parser starts the JSON grammar at the first token, so the
    model cannot think at all; nothing fails, the scores are just those of a non-thinking run.
    """
    answered = [r for r in rows if r is not None and r["status"] in ("ok", "parse_fail")]
    if not (cfg.structured and p.think and cfg.backend == "openai" and answered):
        return None
    if any(r.get("reasoning") for r in answered):
        return None
    parser = f" --reasoning-parser {p.preset.reasoning_parser}" if p.preset.reasoning_parser else ""
    return (
        f"--structured with thinking on, but none of {len(answered)} answers carried reasoning: "
        "a server without a reasoning parser starts the JSON grammar at the first token, "
        f"which suppresses thinking (start it with{parser or ' --reasoning-parser NAME'})"
    )


def run_summary(
    rows: list[dict[str, Any] | None],
    cfg: DecodeConfig,
    p: Plan,
    score_rows: Callable[[list[tuple[dict[str, Any], Job]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary.json of a run's answered rows (decode's `Task`); `score_rows` replaces the
    scene scores (qa builds its summary on this one)."""
    answered = [(r, j) for r, j in zip(rows, p.jobs, strict=True) if r is not None]
    if score_rows is not None:
        scores = score_rows(answered)
    else:
        preds = [
            DecodedScene.model_validate(r["parsed"]) if r["parsed"] else None for r, _ in answered
        ]
        scores = summarize_scores(preds, [j.truth for _, j in answered], cfg.scoring)
        if cfg.backend == "knn":  # beside the same queries answered from a random shot
            from llm_decode.controls import decode_control, random_shots

            draws = random_shots(len(p.selection.test), len(p.shots), p.sampling_seed)
            control = [p.shots[draws[j.index]].scene for _, j in answered]
            truths = [j.truth for _, j in answered]
            scores["baselines"] = decode_control(
                preds, control, truths, cfg.scoring, p.sampling_seed
            )
    tokens = {
        name: int(sum(r["usage"].get(name, 0) for r, _ in answered))
        for name in ("prompt_tokens", "completion_tokens")
    }
    latencies = [r["latency_s"] for r, _ in answered]
    return {
        **scores,
        "missing": len(p.jobs) - len(answered),
        "complete": len(answered) == len(p.jobs),
        **p.identity,
        "usage": tokens,
        "latency_mean_s": float(np.mean(latencies)) if latencies else None,
        "protocol": {
            **cfg.protocol.model_dump(),
            "temperature": p.temperature,
            "sampling": {"temperature": p.temperature, **p.card_extras},
            "sampling_source": "the model's default (its API accepts no temperature)"
            if p.preset.reasoning_api and cfg.backend == "openai"
            else "model card (--card-sampling)"
            if cfg.card_sampling
            else "protocol (paper: temperature 0)",
            "extra_body": p.extra_body,
            "max_tokens": p.max_tokens,
            "structured": cfg.structured,
            "think": p.think,
            "selection": p.selection.source,
            "test_rows": [j.row for j in p.jobs],
            "limit": cfg.limit,
            "sampling_seed": p.sampling_seed,
            "shot_rows": p.selection.shots,
            "template": p.builder.source_name,
            "template_sha256": p.builder.template_sha256,
        },
    }


@dataclass(frozen=True)
class Task:
    """What `decode` runs through its one machinery (queue, retries, resume, rows): how a
    config becomes a plan, where the rows go, and how they are summarised."""

    plan: Callable[[Any], Plan]
    folder: Callable[[RunFolder, Any, Plan], Path]
    summary: Callable[[list[dict[str, Any] | None], Any, Plan], dict[str, Any]]
    #: The task's own backend for (cfg, plan), or None for the configured one.
    backend: Callable[[Any, Plan], Any] | None = None


#: Scene decoding, the paper's Appendix G task.
DECODE = Task(plan, output_folder, run_summary)
