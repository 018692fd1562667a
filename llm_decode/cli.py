"""`strop-llm`: decode CLEVR scenes from STROP programs with LLMs, and tabulate the results.

Design decisions
- Options map one-to-one onto `DecodeConfig` fields; pydantic validates them, and every
  failure at the edge is printed as one line, never a traceback, and never with the API key
  in it: a bad option or template exits 2 (usage); a run folder, scenes file or backend that
  fails exits 1 (the work failed), as in every STROP tool (`strop.cli_app`).
- The progress bar counts done and failed requests, shows completion tokens per second as
  they stream, requests in flight, retries and long timeouts, and what a stalled run is
  waiting for (`TransportStats`, updated by the backend).
- Option groups with logic (presets, engine options, `--extra-body`) live outside this file;
  here they are only named and passed on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, cast

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from llm_decode import __version__
from llm_decode.backends.base import BackendError, TransportStats, redact
from llm_decode.backends.vllm_offline import VLLMEngineOptions
from llm_decode.presets import describe_presets
from llm_decode.prompting import PromptError
from llm_decode.protocol import ProtocolConfig
from llm_decode.qa.cli import make_qa_command
from llm_decode.report import build_report
from llm_decode.runner import (
    DecodeConfig,
    DecodeInterrupted,
    DecodeResult,
    check_config,
    decode,
    parse_json_object,
)
from strop.cli_app import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Commands, make_app
from strop.runs import RunFolderError
from strop.scenes import SceneFileError

commands = Commands()
console = Console(stderr=True)


def _fail(message: str, secrets: list[str | None], *, usage: bool = False) -> NoReturn:
    # soft_wrap: one line stays one line (greppable), whatever the terminal width
    console.print(
        f"[red]error:[/red] {escape(redact(message, secrets))}",
        markup=True,
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_USAGE if usage else EXIT_FAILED)


@commands.command("decode")
def decode_command(
    model: str | None = typer.Option(
        None,
        "--model",
        help="Preset (qwen3.5, deepseek-v3.1, gpt-oss-120b) or a served model id; naive/knn default to the backend name.",
    ),
    k: int = typer.Option(..., "--k", help="Codebook size: picks the sub-run of --runs."),
    runs: Path = typer.Option(Path("runs/clevr"), "--runs", help="Experiment folder (or one run)."),
    backend: str = typer.Option("openai", "--backend", help="openai | vllm | naive | knn."),
    base_url: str | None = typer.Option(
        None,
        "--base-url",
        help="OpenAI-compatible server root; default $OPENAI_BASE_URL, else http://127.0.0.1:8000/v1.",
    ),
    api_key_env: str = typer.Option(
        "OPENAI_API_KEY", "--api-key-env", help="Environment variable with the API key."
    ),
    served_id: str | None = typer.Option(
        None, "--served-id", help="Override the preset's served model id."
    ),
    shots: int = typer.Option(50, "--shots", help="In-context examples."),
    test: int = typer.Option(15, "--test", help="Held-out images to decode."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draw, sampling and baselines."),
    temperature: float = typer.Option(0.0, "--temperature"),
    concurrency: int = typer.Option(8, "--concurrency", help="Requests in flight."),
    timeout: float = typer.Option(
        120.0, "--timeout", help="Idle limit: seconds without a byte of the answer."
    ),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream answers."),
    max_attempts: int = typer.Option(5, "--max-attempts", help="Transport attempts per request."),
    long_retries: int = typer.Option(
        1, "--long-retries", help="Retries of a request that failed after output had started."
    ),
    parse_retries: int = typer.Option(
        1, "--parse-retries", help="Retries after an unparseable answer."
    ),
    structured: bool = typer.Option(
        False, "--structured", help="Constrain output with the scene JSON schema."
    ),
    template: Path | None = typer.Option(
        None,
        "--template",
        help="Jinja template replacing prompts/decode.j2. It is rendered with full Jinja, "
        "which can run code: use only your own templates.",
    ),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Default: the preset's."),
    think: bool | None = typer.Option(
        None, "--think/--no-think", help="Reasoning suffix and thinking switch; default: preset's."
    ),
    card_sampling: bool = typer.Option(
        False, "--card-sampling", help="Sample as the model card recommends (not temperature 0)."
    ),
    extra_body: str | None = typer.Option(
        None, "--extra-body", help="JSON object merged into every request body."
    ),
    tensor_parallel_size: int | None = typer.Option(
        None, "--tensor-parallel-size", help="vllm backend: GPUs; default: the preset's."
    ),
    max_model_len: int | None = typer.Option(None, "--max-model-len", help="vllm backend."),
    gpu_memory_utilization: float | None = typer.Option(
        None, "--gpu-memory-utilization", help="vllm backend: GPU memory fraction (0.9)."
    ),
    reasoning_parser: str | None = typer.Option(
        None, "--reasoning-parser", help="vllm backend; default: the preset's."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="vllm backend: run the model repository's code."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="vllm backend: requests per engine call (64)."
    ),
    permute_codes: bool = typer.Option(
        False, "--permute-codes", help="Control: permute the query codes."
    ),
    matching: str = typer.Option(
        "attributes", "--matching", help="Object matching: attributes | joint | position | index."
    ),
    position_error: str = typer.Option(
        "mixed", "--position-error", help="Position MSE/MAE: mixed | coordinate | euclidean."
    ),
    naive: str = typer.Option(
        "sampled", "--naive", help="Naive baseline's scene: sampled | proportional | modal."
    ),
) -> None:
    """Decode --test held-out scenes of run K with --shots examples each, score, and save."""
    cfg, secret = config_from_options(DecodeConfig, dict(locals()))
    result, last_error = run_with_progress(decode, cfg, secret)
    s = result.summary
    console.print(
        f"{result.folder}: n={s['n']} parse fails={s['parse_fails']} missing={s['missing']} "
        f"count err={_fmt(s['count_err'])} attr acc={_fmt(s['attr_acc'])} "
        f"pos MSE={_fmt(s['pos_mse'])} pos MAE={_fmt(s['pos_mae'])} AP@inf={_fmt(s['ap']['inf'])}",
        highlight=False,
        soft_wrap=True,
    )
    fail_if_missing(s, last_error, secret)


#: Options that are config fields of the same name (in the protocol, or at the top level).
_PROTOCOL_OPTIONS = ("shots", "test", "seed", "temperature", "parse_retries")
_PLAIN_OPTIONS = (
    "served_id",
    "concurrency",
    "timeout",
    "stream",
    "max_attempts",
    "long_retries",
    "template",
    "max_tokens",
    "think",
    "card_sampling",
)


def config_from_options(
    config_class: type[DecodeConfig], options: dict[str, Any], **fields: Any
) -> tuple[Any, str | None]:
    """The validated config of a command's options (decode's, plus `fields` for another
    task such as `qa`), and the API key to keep out of messages; a bad option exits here."""
    o = options
    api_key_env, backend = o["api_key_env"], o["backend"]
    secret = os.environ.get(api_key_env)
    model = o["model"]
    if model is None:
        if backend not in ("naive", "knn"):
            _fail("--model is required for the openai and vllm backends", [secret], usage=True)
        model = backend
    # unset: the environment's URL (OPENAI_BASE_URL), the preset's engine options
    given: dict[str, Any] = {"base_url": o["base_url"]} if o["base_url"] is not None else {}
    engine: dict[str, Any] = {
        "tensor_parallel_size": o["tensor_parallel_size"],
        "max_model_len": o["max_model_len"],
        "gpu_memory_utilization": o["gpu_memory_utilization"],
        "reasoning_parser": o["reasoning_parser"],
        "trust_remote_code": o["trust_remote_code"] or None,
        "batch_size": o["batch_size"],
    }
    try:
        extra = parse_json_object("--extra-body", o["extra_body"])
    except BackendError as exc:
        _fail(str(exc), [secret], usage=True)
    try:
        cfg = config_class(
            model=model,
            k=o["k"],
            runs=o["runs"],
            backend=cast(Any, backend),  # a plain str here; pydantic validates the Literal
            **given,
            api_key_env=api_key_env,
            protocol=ProtocolConfig(
                **{n: o[n] for n in _PROTOCOL_OPTIONS},
                permute_codes=o.get("permute_codes", False),
            ),
            **{n: o[n] for n in _PLAIN_OPTIONS},
            structured=o.get("structured", False),
            scoring={
                "matching": o.get("matching", "attributes"),
                "position_error": o.get("position_error", "mixed"),
            },
            naive=cast(Any, o.get("naive", "sampled")),  # pydantic validates the Literal
            extra_body=extra,
            engine=VLLMEngineOptions.model_validate(
                {n: v for n, v in engine.items() if v is not None}
            ),
            **fields,
        )
        check_config(cfg)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        _fail(f"option {field}: {err['msg']} (got {err.get('input')!r})", [secret], usage=True)
    except (RunFolderError, BackendError) as exc:
        _fail(str(exc), [secret])
    return cfg, secret


def run_with_progress(
    run: Callable[..., DecodeResult], cfg: DecodeConfig, secret: str | None
) -> tuple[DecodeResult, str | None]:
    """`run(cfg, ...)` (decode, or another task through it) under the progress bar; every
    failure is one line. Returns the result and the last transport error seen."""
    with _DecodeProgress(f"{cfg.model} K={cfg.k}") as progress:
        try:
            result = run(cfg, on_row=progress.row, on_start=progress.start, stats=progress.stats)
        except PromptError as exc:  # the template given on the command line
            progress.stop()
            _fail(str(exc), [secret], usage=True)
        except (RunFolderError, SceneFileError, BackendError) as exc:
            progress.stop()
            _fail(str(exc), [secret])
        except DecodeInterrupted as exc:
            progress.stop()
            console.print(f"[yellow]{escape(str(exc))}[/yellow]", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    for warning in result.warnings:
        console.print(
            f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True
        )
    return result, progress.last_error


def fail_if_missing(summary: dict[str, Any], last_error: str | None, secret: str | None) -> None:
    if summary["missing"]:
        first = f" (last error: {last_error})" if last_error else ""
        _fail(
            f"{summary['missing']} requests failed{first}; rerun the same command to finish them",
            [secret],
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class _LiveColumn(ProgressColumn):
    """Tokens/s, requests in flight, retries, and what the run waits for, read live."""

    def __init__(self, progress: _DecodeProgress) -> None:
        super().__init__()
        self.owner = progress

    def render(self, task: Task) -> Text:
        return Text(self.owner.live_text(), no_wrap=True, overflow="ellipsis")


class _DecodeProgress:
    """Rich progress: done / failed counts and the backend's live transport stats."""

    def __init__(self, label: str) -> None:
        self.stats = TransportStats()
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done {task.fields[done]} failed {task.fields[failed]}"),
            _LiveColumn(self),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            refresh_per_second=2,
        )
        self.label = label
        self.task: Any = None
        self.done = self.failed = self.row_tokens = 0
        self.last_error: str | None = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> _DecodeProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.progress.stop()

    def start(self, total: int, already: int) -> None:
        self.t0 = time.perf_counter()
        self.done = already
        self.task = self.progress.add_task(
            self.label, total=total, completed=already, done=already, failed=0
        )

    def live_text(self) -> str:
        s = self.stats
        # backends without streaming stats (offline engine, baselines): tokens of finished rows
        tokens = s.tokens or self.row_tokens
        text = f"{tokens / max(time.perf_counter() - self.t0, 1e-9):.1f} tok/s"
        text += f" | in flight {s.in_flight}"
        if s.retries or s.long_timeouts:
            text += f" | retries {s.retries} long timeouts {s.long_timeouts}"
        idle = time.monotonic() - s.last_token_at if s.last_token_at else None
        if s.waiting:
            text += f" | waiting: {s.waiting}"
        elif s.in_flight and (idle is None or idle > 5):
            since = "" if idle is None else f", none for {idle:.0f} s"
            text += f" | waiting: server to send tokens ({s.in_flight} requests open{since})"
        if s.last_event:
            text += f" | last: {s.last_event}"
        return text

    def row(self, row: dict[str, Any]) -> None:
        if row["status"] == "error":
            self.failed += 1
            self.last_error = row["error"]
        else:
            self.done += 1
        self.row_tokens += int(row.get("usage", {}).get("completion_tokens", 0))
        self.progress.update(self.task, advance=1, done=self.done, failed=self.failed)


@commands.command("report")
def report_command(
    runs: Path = typer.Option(Path("runs/clevr"), "--runs", help="Experiment folder (or one run)."),
) -> None:
    """Tabulate every llm/<model>/summary.json (and llm/qa/<model>/) under --runs; writes llm_report.md."""
    try:
        path, table = build_report(runs)
    except RunFolderError as exc:
        _fail(str(exc), [])
        return
    Console().print(table)
    console.print(f"wrote {path}", highlight=False)


@commands.command("presets")
def presets_command() -> None:
    """Print every model preset: served id, thinking switch, sampling, and its `vllm serve` line."""
    Console(soft_wrap=True).print(describe_presets(), highlight=False, markup=False)


# `strop-llm qa`: decode's options and machinery over questions (llm_decode.qa)
commands.command("qa")(make_qa_command(sys.modules[__name__]))

app = make_app(
    "strop-llm",
    __version__,
    "Few-shot decoding of CLEVR scenes (and answering questions about them) from STROP "
    "programs with LLMs, and the scores.",
    commands,
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
