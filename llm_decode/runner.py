"""`strop-llm decode`: select, prompt, query with bounded concurrency, parse, score, record.

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
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llm_decode.backends.base import (
    Backend,
    BackendError,
    Completion,
    TransportError,
    TransportStats,
    one_line,
    read_api_key,
    redact,
    split_url_secrets,
)
from llm_decode.backends.baselines import DEFAULT_NAIVE, NaiveDefinition
from llm_decode.backends.replicas import server_replicas
from llm_decode.backends.transport import TransportOptions, same_field
from llm_decode.backends.vllm_offline import VLLMEngineOptions
from llm_decode.presets import (
    PER_REPLICA_CONCURRENCY,
    PRESETS,
    ModelPreset,
    folder_name,
    resolve_model,
)
from llm_decode.prompting import PromptBuilder, Shot
from llm_decode.protocol import ProtocolConfig, Selection, code_permutation, load_scene, select
from llm_decode.results import (
    IDENTITY_KEYS,
    ResultsFile,
    claim_folder,
    messages_sha256,
    request_key,
)
from llm_decode.schema import DecodedScene, SceneParseError, parse_answer, scene_json_schema
from llm_decode.scoring import ScoringOptions, score_scene, summarize_scores
from strop.cli_options import Flag, FlagGroup
from strop.provenance import stale_reason
from strop.runs import RunFolder, RunLock, find_run

BackendName = Literal["openai", "vllm", "naive", "knn"]
#: `--template`'s help, naming the task's own template
TEMPLATE_HELP = (
    "Jinja template replacing prompts/{}. It is rendered with full Jinja, which can run code: "
    "use only your own templates."
)
#: vLLM's OpenAI-compatible server on this machine, when neither flag nor environment says
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
#: what to do instead of a second run into a results folder in use
RERUN_ADVICE = "stop it and run again: a rerun resumes it, sending only the unanswered requests"


def default_base_url() -> str:
    """`OPENAI_BASE_URL` when set (as the OpenAI SDK reads it), else vLLM's local default."""
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


class DecodeConfig(BaseModel):
    """Everything `strop-llm decode` needs; validated at the edge."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Flag(default=None)] = Field(
        description="Preset (qwen3.5, deepseek-v3.1, gpt-oss-120b, gpt-5) or a served model id; "
        "naive/knn default to the backend name."
    )
    k: Annotated[int, Flag()] = Field(
        ge=1, description="Codebook size: picks the sub-run of `runs`."
    )
    runs: Annotated[Path, Flag()] = Field(
        Path("runs/clevr"), description="Experiment folder (or one run)."
    )
    backend: Annotated[BackendName, Flag(kind=str)] = Field(
        "openai", description="openai | vllm | naive | knn."
    )
    base_url: Annotated[str, Flag()] = Field(
        default_factory=default_base_url,
        description="OpenAI-compatible server root; default $OPENAI_BASE_URL, else "
        f"{DEFAULT_BASE_URL}.",
    )
    api_key_env: Annotated[str, Flag()] = Field(
        "OPENAI_API_KEY", description="Environment variable holding the key."
    )
    served_id: Annotated[str | None, Flag()] = Field(
        None, description="Overrides the preset's served id."
    )
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    concurrency: Annotated[int | None, Flag()] = Field(
        None,
        ge=1,
        description=f"Requests in flight at once; default {PER_REPLICA_CONCURRENCY} per copy of "
        "the model the server runs (vLLM --data-parallel-size, counted from its /metrics), "
        f"else {PER_REPLICA_CONCURRENCY}.",
    )
    timeout: Annotated[float, Flag()] = same_field(TransportOptions, "timeout")
    stream: Annotated[bool, Flag("--stream/--no-stream")] = same_field(TransportOptions, "stream")
    min_tokens_per_s: float = same_field(TransportOptions, "min_tokens_per_s")
    max_attempts: Annotated[int, Flag()] = same_field(TransportOptions, "max_attempts")
    long_retries: Annotated[int, Flag()] = same_field(TransportOptions, "long_retries")
    backoff_base: float = same_field(TransportOptions, "backoff_base")
    backoff_cap: float = same_field(TransportOptions, "backoff_cap")
    limit: Annotated[int | None, Flag()] = Field(
        None, ge=1, description="Decode only the first N drawn test images (a quick look)."
    )
    structured: Annotated[bool, Flag()] = Field(
        False, description="Send the scene JSON schema as response_format."
    )
    template: Annotated[Path | None, Flag()] = Field(
        None, description=TEMPLATE_HELP.format("decode.j2")
    )
    max_tokens: Annotated[int | None, Flag()] = Field(
        None, ge=1, description="Default: the preset's."
    )
    think: Annotated[bool | None, Flag("--think/--no-think")] = Field(
        None, description="Reasoning suffix and thinking switch; default: the preset's."
    )
    card_sampling: Annotated[bool, Flag()] = Field(
        False, description="Sample as the model card recommends instead of temperature 0."
    )
    # typed on the command line as JSON text; `config_from_options` parses it
    extra_body: Annotated[dict[str, Any], Flag(default=None, kind=str | None)] = Field(
        default_factory=dict, description="JSON object merged into every request body."
    )
    engine: Annotated[VLLMEngineOptions, FlagGroup("vllm backend: ", default=None)] = Field(
        default_factory=VLLMEngineOptions, description="vLLM offline engine options."
    )
    scoring: ScoringOptions = Field(
        default_factory=ScoringOptions, description="Matching and position-error definitions."
    )
    naive: Annotated[NaiveDefinition, Flag(kind=str)] = Field(
        DEFAULT_NAIVE, description="The naive baseline's average scene (backend naive)."
    )


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


RowHook = Callable[[dict[str, Any]], None]


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


def parse_json_object(option: str, text: str | None) -> dict[str, Any]:
    """A JSON object given on the command line; anything else is one line naming the option."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BackendError(f"{option}: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise BackendError(f"{option}: expected a JSON object, got {type(value).__name__}")
    return value


def output_folder(run: RunFolder, cfg: DecodeConfig, p: Plan) -> Path:
    """`RUN/llm/<model>`, unique per model identity and protocol: see `claim_folder`."""
    suffix = "-permuted" if cfg.protocol.permute_codes else ""
    identity = {k: p.identity[k] for k in IDENTITY_KEYS} | {"protocol": p.protocol}
    return claim_folder(run.llm_dir, folder_name(cfg.model) + suffix, identity)


@dataclass
class Plan:
    """Everything decided before the first request: the protocol made concrete."""

    run: RunFolder
    k: int
    selection: Selection
    shots: list[Shot]
    preset: ModelPreset
    think: bool
    max_tokens: int
    temperature: float
    card_extras: dict[str, float]  # sampling beyond temperature (--card-sampling)
    extra_body: dict[str, Any]  # sent with every request (openai backend)
    builder: PromptBuilder
    identity: dict[str, Any]  # model, backend, endpoint, K: copied into every row
    jobs: list[Job]
    #: what decides the answers and their scores besides the model: its own results folder
    protocol: dict[str, Any] = field(default_factory=dict)
    sampling_seed: int = 0
    secrets: list[str] = field(default_factory=list)  # the key and URL credentials
    key_sampling: dict[str, Any] = field(default_factory=dict)  # the request key's sampling
    #: the weights the programs came from (`strop.provenance`), copied into the summary
    weights: dict[str, Any] | None = None

    @property
    def jobs_by_key(self) -> dict[str, Job]:
        return {j.key: j for j in self.jobs}


def plan(cfg: DecodeConfig) -> Plan:
    """Select shots and test images, render the prompts and key every request."""
    run = find_run(cfg.runs, cfg.k)
    source = str(run.programs_path)
    # Codes are checked against K by the one validation every reader shares; with no K stored
    # anywhere, the --k that picked the run is the K.
    programs = run.read_programs()
    if programs.codebook_size is None:
        programs.codebook_size, programs.k_source = cfg.k, "--k"
        programs.validate(source)
    k = programs.codebook_size
    selection = select(programs, cfg.protocol, source)
    shots = [
        Shot(programs.codes[i].tolist(), load_scene(programs, i, source)) for i in selection.shots
    ]
    preset = resolve_model(cfg.model, cfg.served_id)
    think = preset.think if cfg.think is None else cfg.think
    max_tokens = cfg.max_tokens or preset.budget(think)
    temperature, card_extras = _sampling(cfg, preset, think)
    builder = PromptBuilder(codebook_size=k, shots=shots, think=think, template=cfg.template)
    llm = cfg.backend in ("openai", "vllm")
    endpoint, secrets = split_url_secrets(cfg.base_url.rstrip("/"))
    if cfg.backend != "openai":
        endpoint, secrets = cfg.backend, []
    if cfg.backend == "naive":  # a different average scene is a different answer
        endpoint = f"naive:{cfg.naive}"
    sampling: dict[str, Any] = {
        "temperature": temperature,
        "max_tokens": max_tokens,
        "parse_retries": cfg.protocol.parse_retries,
    }
    extra_body: dict[str, Any] = {}
    if llm:
        switch = preset.extra_body(think)
        extra_body = {**switch, **card_extras, **cfg.extra_body}
        if extra_body:  # absent when empty, so keys of plain models stay what they were
            sampling["extra_body"] = extra_body
    schema = scene_json_schema() if cfg.structured and llm else None
    perm = code_permutation(k, cfg.protocol.seed) if cfg.protocol.permute_codes else None
    sampling_seed = cfg.protocol.sampling_seed_or_seed
    jobs = []
    for index, row in enumerate(selection.test):
        codes = programs.codes[row]
        codes = (perm[codes] if perm is not None else codes).tolist()
        messages = builder.messages(codes)
        key = request_key(
            model=preset.served_id if llm else cfg.backend,
            endpoint=endpoint,
            messages=messages,
            sampling=sampling,
            schema=schema,
            seed=sampling_seed,
        )
        truth = load_scene(programs, row, source)
        jobs.append(Job(index, row, programs.image_id[row], codes, truth, messages, key))
    if cfg.limit is not None:  # the first N drawn: their keys are those of the full run
        jobs = jobs[: cfg.limit]
    identity = {
        "model": cfg.model,
        "served_id": preset.served_id if llm else None,
        "backend": cfg.backend,
        "endpoint": endpoint,
        "k": k,
        "permuted": cfg.protocol.permute_codes,
        "naive_definition": cfg.naive if cfg.backend == "naive" else None,
    }
    protocol = {
        "shots": cfg.protocol.shots,
        "test": cfg.protocol.test,
        "seed": cfg.protocol.seed,
        "sampling_seed": sampling_seed,
        "parse_retries": cfg.protocol.parse_retries,
        "sampling": {"temperature": temperature, **card_extras},
        "extra_body": extra_body,
        "max_tokens": max_tokens if llm else None,
        "structured": cfg.structured and llm,
        "think": think if llm else None,
        "template_sha256": builder.template_sha256 if llm else None,
        "scoring": cfg.scoring.model_dump(),
        "naive_definition": cfg.naive if cfg.backend == "naive" else None,
    }
    return Plan(
        run,
        k,
        selection,
        shots,
        preset,
        think,
        max_tokens,
        temperature,
        card_extras,
        extra_body,
        builder,
        identity,
        jobs,
        protocol,
        sampling_seed,
        secrets,
        sampling,
        programs.meta.get("weights"),
    )


def _sampling(
    cfg: DecodeConfig, preset: ModelPreset, think: bool
) -> tuple[float, dict[str, float]]:
    """(temperature, other sampling fields): the protocol's, or on request the card's for the
    thinking mode in use."""
    if not cfg.card_sampling:
        return cfg.protocol.temperature, {}
    if not preset.card(think):
        mode = "thinking" if think else "non-thinking"
        raise BackendError(
            f"--card-sampling: {cfg.model} has no card sampling for {mode} (presets with one: "
            + ", ".join(n for n, p in PRESETS.items() if p.card_sampling)
            + ")"
        )
    card = preset.card(think)
    return float(card.pop("temperature", cfg.protocol.temperature)), card


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
            runner = _run_batch if hasattr(backend, "complete_batch") else _run_async
            asyncio.run(runner(backend, p.builder, todo, cfg, p.identity, record))
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


async def _run_async(
    backend: Backend,
    builder: PromptBuilder,
    todo: list[Job],
    cfg: DecodeConfig,
    identity: dict[str, Any],
    record: RowHook,
) -> None:
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
                outcome = await _answer(backend, builder, job, cfg.protocol.parse_retries)
            except Exception as exc:  # a bug or a backend surprise: one bad row, never the run
                message = one_line(f"internal error: {type(exc).__name__}: {exc}")
                outcome = Outcome([], message, transport_failed=True)
            record(_row(job, identity, outcome, started, cfg.scoring))

    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency(cfg), len(todo)))))
    finally:
        await backend.aclose()


async def _run_batch(
    backend: Any,
    builder: PromptBuilder,
    todo: list[Job],
    cfg: DecodeConfig,
    identity: dict[str, Any],
    record: RowHook,
) -> None:
    """The offline engine: `batch_size` jobs at a time, rows written after each batch."""
    size = int(getattr(backend, "batch_size", 0)) or len(todo)
    done = 0
    try:
        for first in range(0, len(todo), size):
            batch = todo[first : first + size]
            try:
                rows = await _answer_batch(backend, builder, batch, cfg, identity)
            except Exception as exc:  # the engine: CUDA errors, OOM, a dead worker ...
                raise BackendError(
                    one_line(
                        f"vLLM engine failed on requests {first + 1}-{first + len(batch)} of "
                        f"{len(todo)}: {type(exc).__name__}: {exc}; {done} answers saved, "
                        "rerun the same command to resume"
                    )
                ) from None
            for row in rows:
                record(row)
            done += len(rows)
    finally:
        await backend.aclose()


async def _answer_batch(
    backend: Any,
    builder: PromptBuilder,
    batch: list[Job],
    cfg: DecodeConfig,
    identity: dict[str, Any],
) -> list[dict[str, Any]]:
    """One batch through the engine, then one engine call per parse retry: its rows."""
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


class UsageError(ValueError):
    """A command line that cannot work (a missing --template file): exit 2, one line."""


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


def check_config(cfg: DecodeConfig) -> None:
    """Fail at the edge, before any request, on what can be checked without the run."""
    if cfg.template is not None and not Path(cfg.template).is_file():
        raise UsageError(f"--template {cfg.template}: template file not found")
    if cfg.backend == "openai" and not cfg.base_url.startswith(("http://", "https://")):
        raise BackendError(f"--base-url {redact(cfg.base_url)!r}: expected http(s)://HOST:PORT/v1")
