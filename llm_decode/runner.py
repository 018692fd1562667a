"""`strop-llm decode`: select, prompt, query with bounded concurrency, parse, score, record.

Design decisions
- Everything a run depends on is one validated `DecodeConfig`; the CLI only builds it.
- Requests are fed from a queue to `concurrency` worker tasks, so exactly that many are in
  flight while work remains, however uneven the latencies. A worker keeps its slot through
  the parse retry, so the retry does not jump the queue.
- The parse retry (one by default, as in the paper) sends the template's `repair` message
  after the failed answer; a template without that block resends the original request.
- Every answer is written the moment it arrives (`ResultsFile.append`); transport failures
  are recorded as `error` rows and retried by the next run; the summary is recomputed from
  the rows of this protocol's keys.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from llm_decode.backends.base import Backend, BackendError, Completion, TransportError, redact
from llm_decode.backends.baselines import DEFAULT_NAIVE, NaiveDefinition
from llm_decode.presets import ModelPreset, folder_name, resolve_model
from llm_decode.prompting import PromptBuilder, Shot
from llm_decode.protocol import ProtocolConfig, Selection, code_permutation, load_scene, select
from llm_decode.results import ResultsFile, claim_folder, messages_sha256, request_key
from llm_decode.schema import DecodedScene, SceneParseError, parse_answer, scene_json_schema
from llm_decode.scoring import ScoringOptions, score_scene, summarize_scores
from strop.runs import RunFolder, RunFolderError, find_run

BackendName = Literal["openai", "vllm", "naive", "knn"]


class DecodeConfig(BaseModel):
    """Everything `strop-llm decode` needs; validated at the edge."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="Preset name or served model id; naive/knn by default for those."
    )
    k: int = Field(ge=1, description="Codebook size: picks the sub-run of `runs`.")
    runs: Path = Field(Path("runs/clevr"), description="Experiment folder (or one run).")
    backend: BackendName = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key.")
    served_id: str | None = Field(None, description="Overrides the preset's served id.")
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout: float = Field(120.0, gt=0, description="Seconds per request attempt.")
    max_attempts: int = Field(5, ge=1, description="Transport attempts per request.")
    backoff_base: float = Field(1.0, ge=0)
    backoff_cap: float = Field(30.0, ge=0)
    structured: bool = Field(False, description="Send the scene JSON schema as response_format.")
    template: Path | None = Field(None, description="A Jinja template replacing prompts/decode.j2.")
    max_tokens: int | None = Field(None, ge=1, description="Default: the preset's.")
    think: bool | None = Field(None, description="Add the reasoning suffix; default: the preset's.")
    scoring: ScoringOptions = Field(
        default_factory=ScoringOptions, description="Matching and position-error definitions."
    )
    naive: NaiveDefinition = Field(
        DEFAULT_NAIVE, description="The naive baseline's average scene (backend naive)."
    )


@dataclass
class Job:
    index: int  # position in the test set
    row: int  # row of programs.parquet
    image_id: str
    codes: list[int]  # as sent (permuted under the control)
    truth: DecodedScene
    messages: list[dict[str, str]]
    key: str


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


RowHook = Callable[[dict[str, Any]], None]


def _build_backend(
    cfg: DecodeConfig, preset: ModelPreset, max_tokens: int, shots: Sequence[Shot], k: int
) -> Any:
    schema = scene_json_schema() if cfg.structured else None
    if cfg.backend == "naive":
        from llm_decode.backends.baselines import NaiveBackend

        return NaiveBackend([s.scene for s in shots], seed=cfg.protocol.seed, definition=cfg.naive)
    if cfg.backend == "knn":
        from llm_decode.backends.baselines import KnnBackend

        return KnnBackend([s.codes for s in shots], [s.scene for s in shots], k)
    if cfg.backend == "vllm":
        from llm_decode.backends.vllm_offline import VLLMBackend

        return VLLMBackend(
            preset.served_id,
            temperature=cfg.protocol.temperature,
            max_tokens=max_tokens,
            seed=cfg.protocol.seed,
            response_schema=schema,
        )
    from llm_decode.backends.openai_compat import OpenAIBackend, OpenAIConfig

    return OpenAIBackend(
        OpenAIConfig(
            base_url=cfg.base_url,
            model=preset.served_id,
            temperature=cfg.protocol.temperature,
            max_tokens=max_tokens,
            seed=cfg.protocol.seed,
            timeout=cfg.timeout,
            max_attempts=cfg.max_attempts,
            backoff_base=cfg.backoff_base,
            backoff_cap=cfg.backoff_cap,
            response_schema=schema,
        ),
        os.environ.get(cfg.api_key_env) or None,
        rng_seed=cfg.protocol.seed,
    )


def output_folder(run: RunFolder, cfg: DecodeConfig, identity: dict[str, Any]) -> Path:
    """`RUN/llm/<model>`, unique per (model, served id, backend, endpoint): see `claim_folder`."""
    suffix = "-permuted" if cfg.protocol.permute_codes else ""
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
    builder: PromptBuilder
    identity: dict[str, Any]  # model, backend, endpoint, K: copied into every row
    jobs: list[Job]


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
    max_tokens = cfg.max_tokens or preset.max_tokens
    builder = PromptBuilder(codebook_size=k, shots=shots, think=think, template=cfg.template)
    llm = cfg.backend in ("openai", "vllm")
    endpoint = redact(cfg.base_url.rstrip("/")) if cfg.backend == "openai" else cfg.backend
    if cfg.backend == "naive":  # a different average scene is a different answer
        endpoint = f"naive:{cfg.naive}"
    sampling = {
        "temperature": cfg.protocol.temperature,
        "max_tokens": max_tokens,
        "parse_retries": cfg.protocol.parse_retries,
    }
    schema = scene_json_schema() if cfg.structured and llm else None
    perm = code_permutation(k, cfg.protocol.seed) if cfg.protocol.permute_codes else None
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
            seed=cfg.protocol.seed,
        )
        truth = load_scene(programs, row, source)
        jobs.append(Job(index, row, programs.image_id[row], codes, truth, messages, key))
    identity = {
        "model": cfg.model,
        "served_id": preset.served_id if llm else None,
        "backend": cfg.backend,
        "endpoint": endpoint,
        "k": k,
        "permuted": cfg.protocol.permute_codes,
        "naive_definition": cfg.naive if cfg.backend == "naive" else None,
    }
    return Plan(run, k, selection, shots, preset, think, max_tokens, builder, identity, jobs)


def decode(
    cfg: DecodeConfig,
    on_row: RowHook | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> DecodeResult:
    """Run (or resume) one decoding experiment; returns the folder and the summary.

    `on_start(total, already_done)` is called once before any request, `on_row(row)` after
    each answer is written.
    """
    p = plan(cfg)
    results = ResultsFile(output_folder(p.run, cfg, p.identity))
    todo = [j for j in p.jobs if j.key not in results.done]
    if on_start is not None:
        on_start(len(p.jobs), len(p.jobs) - len(todo))

    def record(row: dict[str, Any]) -> None:
        results.append(row)
        if on_row is not None:
            on_row(row)

    try:
        if todo:
            backend = _build_backend(cfg, p.preset, p.max_tokens, p.shots, p.k)
            runner = _run_batch if hasattr(backend, "complete_batch") else _run_async
            asyncio.run(runner(backend, p.builder, todo, cfg, p.identity, record))
    except KeyboardInterrupt:
        saved = sum(j.key in results.done for j in p.jobs)
        raise DecodeInterrupted(results.path, saved, len(p.jobs)) from None
    finally:
        results.close()
    rows = [results.done.get(j.key) for j in p.jobs]
    summary = _summary(rows, cfg, p)
    results.write_summary(summary)
    return DecodeResult(folder=results.folder, summary=summary, sent=len(todo))


async def _answer(
    backend: Backend, builder: PromptBuilder, job: Job, retries: int
) -> tuple[Completion | None, list[Completion], str | None, DecodedScene | None]:
    """Query with up to `retries` parse retries: (last completion, all, error, scene)."""
    messages = job.messages
    completions: list[Completion] = []
    error = None
    for _ in range(retries + 1):
        try:
            completion = await backend.complete(messages, job.codes)
        except TransportError as exc:
            return None, completions, str(exc), None
        completions.append(completion)
        try:
            return completion, completions, None, parse_answer(completion.text)
        except SceneParseError as exc:
            error = str(exc)
            messages = builder.repair_messages(job.messages, completion.text, error) or job.messages
    return completions[-1], completions, error, None


def _row(
    job: Job,
    identity: dict[str, Any],
    completions: list[Completion],
    error: str | None,
    scene: DecodedScene | None,
    transport_failed: bool,
    started: float,
    scoring: ScoringOptions | None = None,
) -> dict[str, Any]:
    last = completions[-1] if completions else None
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
        "response": last.text if last else None,
        "reasoning": last.reasoning if last else None,
        "finish_reason": last.finish_reason if last else None,
        "usage": usage,
        "latency_s": round(time.perf_counter() - started, 4),
        "attempts": sum(c.attempts for c in completions),
        "parse_attempts": len(completions),
        "codes": job.codes,
        "parsed": scene.model_dump() if scene is not None else None,
        "truth": job.truth.model_dump(),
        "scores": score_scene(scene, job.truth, scoring).to_dict() if scene is not None else None,
        "time": time.time(),
    }


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
            last, completions, error, scene = await _answer(
                backend, builder, job, cfg.protocol.parse_retries
            )
            failed = last is None
            record(_row(job, identity, completions, error, scene, failed, started, cfg.scoring))

    try:
        await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency, len(todo)))))
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
    """The offline engine: the whole batch at once, then one batch per parse retry."""
    started = time.perf_counter()
    history: dict[str, list[Completion]] = {j.key: [] for j in todo}
    pending = {j.key: j.messages for j in todo}
    errors: dict[str, str] = {}
    scenes: dict[str, DecodedScene] = {}
    by_key = {j.key: j for j in todo}
    for _ in range(cfg.protocol.parse_retries + 1):
        if not pending:
            break
        keys = list(pending)
        completions = await asyncio.to_thread(backend.complete_batch, [pending[k] for k in keys])
        pending = {}
        for key, completion in zip(keys, completions, strict=True):
            history[key].append(completion)
            try:
                scenes[key] = parse_answer(completion.text)
            except SceneParseError as exc:
                errors[key] = str(exc)
                job = by_key[key]
                pending[key] = (
                    builder.repair_messages(job.messages, completion.text, str(exc)) or job.messages
                )
    for job in todo:
        scene = scenes.get(job.key)
        record(
            _row(
                job,
                identity,
                history[job.key],
                None if scene else errors.get(job.key),
                scene,
                False,
                started,
                cfg.scoring,
            )
        )
    await backend.aclose()


def _summary(rows: list[dict[str, Any] | None], cfg: DecodeConfig, p: Plan) -> dict[str, Any]:
    answered = [(r, j) for r, j in zip(rows, p.jobs, strict=True) if r is not None]
    preds = [DecodedScene.model_validate(r["parsed"]) if r["parsed"] else None for r, _ in answered]
    scores = summarize_scores(preds, [j.truth for _, j in answered], cfg.scoring)
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
            "max_tokens": p.max_tokens,
            "structured": cfg.structured,
            "think": p.think,
            "selection": p.selection.source,
            "test_rows": p.selection.test,
            "shot_rows": p.selection.shots,
            "template": p.builder.source_name,
            "template_sha256": p.builder.template_sha256,
        },
    }


def check_config(cfg: DecodeConfig) -> None:
    """Fail at the edge, before any request, on what can be checked without the run."""
    if cfg.template is not None and not Path(cfg.template).is_file():
        raise RunFolderError(f"{cfg.template}: template file not found")
    if cfg.backend == "openai" and not cfg.base_url.startswith(("http://", "https://")):
        raise BackendError(f"--base-url {redact(cfg.base_url)!r}: expected http(s)://HOST:PORT/v1")
