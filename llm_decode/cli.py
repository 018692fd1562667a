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

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, cast

import typer
from pydantic import BaseModel, ValidationError
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
from llm_decode.backends.base import (
    BackendError,
    TransportStats,
    read_api_key,
    redact,
    split_url_secrets,
)
from llm_decode.backends.vllm_offline import VLLMEngineOptions
from llm_decode.presets import Hardware, describe_presets
from llm_decode.prompting import PromptError
from llm_decode.protocol import ProtocolConfig
from llm_decode.qa.cli import make_qa_command
from llm_decode.report import build_report
from llm_decode.results import RESULTS_FILE, repair_jsonl
from llm_decode.runner import (
    DEFAULT_BASE_URL,
    DecodeConfig,
    DecodeInterrupted,
    DecodeResult,
    UsageError,
    check_config,
    decode,
    parse_json_object,
    plan,
)
from llm_decode.scoring import ScoringOptions
from strop.atomic import OutputPathError
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


def _opt(model: type[BaseModel], name: str, *decls: str, help: str | None = None) -> Any:
    """A typer option whose default and help are `model`'s declaration of field `name`."""
    info = model.model_fields[name]
    if info.is_required():
        default: Any = ...
    else:
        default = None if info.default_factory is not None else info.default
    return typer.Option(default, *decls, help=help or info.description)


_E = VLLMEngineOptions  # engine options: the preset decides unless given, so default None


def _engine_opt(name: str, *decls: str) -> Any:
    info = _E.model_fields[name]
    return typer.Option(None, *decls, help=f"vllm backend: {info.description}")


@commands.command("decode")
def decode_command(
    model: str | None = typer.Option(
        None,
        "--model",
        help="Preset (qwen3.5, deepseek-v3.1, gpt-oss-120b, gpt-5) or a served model id; "
        "naive/knn default to the backend name.",
    ),
    k: int = _opt(DecodeConfig, "k", "--k"),
    runs: Path = _opt(DecodeConfig, "runs", "--runs"),
    backend: str = _opt(DecodeConfig, "backend", "--backend", help="openai | vllm | naive | knn."),
    base_url: str | None = _opt(
        DecodeConfig,
        "base_url",
        "--base-url",
        help=f"OpenAI-compatible server root; default $OPENAI_BASE_URL, else {DEFAULT_BASE_URL}.",
    ),
    api_key_env: str = _opt(DecodeConfig, "api_key_env", "--api-key-env"),
    served_id: str | None = _opt(DecodeConfig, "served_id", "--served-id"),
    shots: int = _opt(ProtocolConfig, "shots", "--shots"),
    test: int = _opt(ProtocolConfig, "test", "--test"),
    seed: int = _opt(ProtocolConfig, "seed", "--seed"),
    sampling_seed: int | None = _opt(ProtocolConfig, "sampling_seed", "--sampling-seed"),
    temperature: float = _opt(ProtocolConfig, "temperature", "--temperature"),
    limit: int | None = _opt(DecodeConfig, "limit", "--limit"),
    concurrency: int = _opt(DecodeConfig, "concurrency", "--concurrency"),
    timeout: float = _opt(DecodeConfig, "timeout", "--timeout"),
    stream: bool = _opt(DecodeConfig, "stream", "--stream/--no-stream"),
    max_attempts: int = _opt(DecodeConfig, "max_attempts", "--max-attempts"),
    long_retries: int = _opt(DecodeConfig, "long_retries", "--long-retries"),
    parse_retries: int = _opt(ProtocolConfig, "parse_retries", "--parse-retries"),
    structured: bool = _opt(DecodeConfig, "structured", "--structured"),
    template: Path | None = _opt(
        DecodeConfig,
        "template",
        "--template",
        help="Jinja template replacing prompts/decode.j2. It is rendered with full Jinja, "
        "which can run code: use only your own templates.",
    ),
    max_tokens: int | None = _opt(DecodeConfig, "max_tokens", "--max-tokens"),
    think: bool | None = _opt(DecodeConfig, "think", "--think/--no-think"),
    card_sampling: bool = _opt(DecodeConfig, "card_sampling", "--card-sampling"),
    extra_body: str | None = typer.Option(
        None, "--extra-body", help="JSON object merged into every request body."
    ),
    tensor_parallel_size: int | None = _engine_opt(
        "tensor_parallel_size", "--tensor-parallel-size"
    ),
    max_model_len: int | None = _engine_opt("max_model_len", "--max-model-len"),
    gpu_memory_utilization: float | None = _engine_opt(
        "gpu_memory_utilization", "--gpu-memory-utilization"
    ),
    reasoning_parser: str | None = _engine_opt("reasoning_parser", "--reasoning-parser"),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help=f"vllm backend: {_E.model_fields['trust_remote_code'].description}",
    ),
    batch_size: int | None = _engine_opt("batch_size", "--batch-size"),
    permute_codes: bool = _opt(ProtocolConfig, "permute_codes", "--permute-codes"),
    matching: str = _opt(ScoringOptions, "matching", "--matching"),
    position_error: str = _opt(ScoringOptions, "position_error", "--position-error"),
    naive: str = _opt(DecodeConfig, "naive", "--naive"),
    show_prompt: bool = typer.Option(
        False,
        "--show-prompt",
        help="Print the exact messages of the first test image as JSON and exit (no request).",
    ),
) -> None:
    """Decode --test held-out scenes of run K with --shots examples each, score, and save.

    The programs file needs scenes: shots come from its train rows and test images from its
    val/test rows (strop export RUN --split train,val); a file with one split is divided by
    the seed.
    """
    cfg, secrets = config_from_options(DecodeConfig, dict(locals()))
    if show_prompt:
        print_first_prompt(plan, cfg, secrets)
        return
    result = run_with_progress(decode, cfg, secrets)
    s = result.summary
    console.print(
        f"{result.folder}: n={s['n']} parse fails={s['parse_fails']} missing={s['missing']} "
        f"count err={_fmt(s['count_err'])} attr acc={_fmt(s['attr_acc'])} "
        f"pos MSE={_fmt(s['pos_mse'])} pos MAE={_fmt(s['pos_mae'])} AP@inf={_fmt(s['ap']['inf'])}",
        highlight=False,
        soft_wrap=True,
    )
    fail_if_missing(s, result.folder, secrets)


#: Options that are config fields of the same name (in the protocol, or at the top level);
#: `o.get` reads the ones another task's command (qa) does not have.
_PROTOCOL_OPTIONS = ("shots", "test", "seed", "sampling_seed", "temperature", "parse_retries")
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
    "limit",
    "card_sampling",
)


def config_from_options(
    config_class: type[DecodeConfig], options: dict[str, Any], **fields: Any
) -> tuple[Any, list[str | None]]:
    """The validated config of a command's options (decode's, plus `fields` for another task
    such as `qa`), and the secrets to keep out of every message (the API key, credentials in
    the URL); a bad option exits here, in one line."""
    o = options
    api_key_env, backend, base_url = o["api_key_env"], o["backend"], o["base_url"]
    secrets: list[str | None] = [read_api_key(api_key_env)]
    if base_url is not None:
        secrets += split_url_secrets(base_url)[1]
    model = o["model"]
    if model is None:
        if backend not in ("naive", "knn"):
            _fail("--model is required for the openai and vllm backends", secrets, usage=True)
        model = backend
    # unset: the environment's URL (OPENAI_BASE_URL), the preset's engine options
    given: dict[str, Any] = {"base_url": base_url} if base_url is not None else {}
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
        _fail(str(exc), secrets, usage=True)
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
            **({"naive": o["naive"]} if "naive" in o else {}),
            extra_body=extra,
            engine=VLLMEngineOptions.model_validate(
                {n: v for n, v in engine.items() if v is not None}
            ),
            **fields,
        )
        secrets += split_url_secrets(cfg.base_url)[1]
        check_config(cfg)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        _fail(f"option {field}: {err['msg']} (got {err.get('input')!r})", secrets, usage=True)
    except (PromptError, UsageError) as exc:  # a --template that is missing
        _fail(str(exc), secrets, usage=True)
    except (RunFolderError, OutputPathError, BackendError) as exc:
        _fail(str(exc), secrets)
    return cfg, secrets


def print_first_prompt(
    make_plan: Callable[[Any], Any], cfg: Any, secrets: list[str | None]
) -> None:
    """`--show-prompt`: the exact messages of the first test request, as JSON (no request)."""
    try:
        messages = make_plan(cfg).jobs[0].messages
    except PromptError as exc:
        _fail(str(exc), secrets, usage=True)
    except (RunFolderError, OutputPathError, SceneFileError, BackendError) as exc:
        _fail(str(exc), secrets)
    typer.echo(json.dumps(messages, indent=2, ensure_ascii=False))


def run_with_progress(
    run: Callable[..., DecodeResult], cfg: DecodeConfig, secrets: list[str | None]
) -> DecodeResult:
    """`run(cfg, ...)` (decode, or another task through it) under the progress bar; every
    failure is one line, and warnings are printed with the secrets redacted."""
    llm = cfg.backend in ("openai", "vllm")
    with _DecodeProgress(f"{cfg.model} K={cfg.k}", llm=llm) as progress:
        try:
            result = run(cfg, on_row=progress.row, on_start=progress.start, stats=progress.stats)
        except PromptError as exc:  # the template given on the command line
            progress.stop()
            _fail(str(exc), secrets, usage=True)
        except (RunFolderError, OutputPathError, SceneFileError, BackendError) as exc:
            progress.stop()
            _fail(str(exc), secrets)
        except DecodeInterrupted as exc:
            progress.stop()
            console.print(f"[yellow]{escape(str(exc))}[/yellow]", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    for warning in result.warnings:
        console.print(
            f"[yellow]warning:[/yellow] {escape(redact(warning, secrets))}",
            highlight=False,
            soft_wrap=True,
        )
    return result


def fail_if_missing(summary: dict[str, Any], folder: Path, secrets: list[str | None]) -> None:
    """Exit 1 when answers are missing, saying why and whether a rerun can finish them."""
    if summary["missing"]:
        _fail(missing_message(folder, summary["missing"]), secrets)


def missing_message(folder: Path, missing: int) -> str:
    """Why answers are missing, and whether a rerun can finish them."""
    latest: dict[str, dict[str, Any]] = {}
    for row in repair_jsonl(folder / RESULTS_FILE)[0]:
        latest[row.get("key", "")] = row
    errors = [r for r in latest.values() if r.get("status") == "error"]
    refused = [r for r in errors if r.get("retryable") is False]
    transient = [r for r in errors if r.get("retryable") is not False]
    parts = []
    if transient:
        parts.append(
            f"{len(transient)} requests failed in transport (last: {transient[-1]['error']}); "
            "rerun the same command to finish them"
        )
    if refused:
        parts.append(
            f"{len(refused)} requests were refused by the server (last: {refused[-1]['error']}); "
            "a rerun sends them unchanged and will be refused again: change what is sent "
            "(--max-tokens, --template, --extra-body, the model) or the server"
        )
    return "; ".join(parts) or f"{missing} answers missing; rerun the same command to finish them"


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

    def __init__(self, label: str, llm: bool = True) -> None:
        self.llm = llm  # baselines have no tokens: no tokens/s to show
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
        text = f"in flight {s.in_flight}"
        if self.llm:
            rate = tokens / max(time.perf_counter() - self.t0, 1e-9)
            text = f"{rate:.1f} tok/s | {text}"
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
    except (RunFolderError, OutputPathError) as exc:
        _fail(str(exc), [])
        return
    Console().print(table)
    console.print(f"wrote {path}", highlight=False)


@commands.command("presets")
def presets_command(
    gpus: str | None = typer.Option(
        None,
        "--gpus",
        help="The node's GPUs, e.g. 8xH100 or 1xH200: print the serve lines for it "
        "(default: every node the recipes cover).",
    ),
) -> None:
    """Print every model preset: served id, thinking switch, sampling, and its `vllm serve` line."""
    try:
        hardware = Hardware.parse(gpus) if gpus is not None else None
    except ValueError as exc:
        _fail(str(exc), [], usage=True)
        return
    Console(soft_wrap=True).print(describe_presets(hardware), highlight=False, markup=False)


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
