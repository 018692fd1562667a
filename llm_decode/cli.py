"""`strop-llm`: decode CLEVR scenes from STROP programs with LLMs, and tabulate the results.

Design decisions
- Every option is declared once, as a `Flag` on the config field it sets (its type,
  default and help; `strop.cli_options` derives the typer command from `DecodeConfig`);
  pydantic validates them, and every failure at the edge is printed as one line, never a
  traceback, and never with the API key in it: a bad option or template exits 2 (usage); a run folder, scenes file or backend that
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
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, Field, ValidationError
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
    DecodeConfig,
    DecodeInterrupted,
    DecodeResult,
    UsageError,
    check_config,
    decode,
    parse_json_object,
    plan,
)
from strop import cli_options
from strop.atomic import OutputPathError
from strop.cli_app import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Commands, make_app
from strop.cli_options import Flag
from strop.errors import error_line
from strop.runs import RunFolderError
from strop.scenes import SceneFileError

commands = Commands()
console = Console(stderr=True)


def fail(message: str, secrets: list[str | None], *, usage: bool = False) -> NoReturn:
    # soft_wrap: one line stays one line (greppable), whatever the terminal width
    console.print(
        f"[red]error:[/red] {escape(redact(message, secrets))}",
        markup=True,
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_USAGE if usage else EXIT_FAILED)


class CommandOptions(BaseModel):
    """Options of the decode and qa commands that set no config field."""

    show_prompt: Annotated[bool, Flag()] = Field(
        False,
        description="Print the exact messages of the first test image as JSON and exit "
        "(no request).",
    )


def _decode(options: dict[str, Any]) -> None:
    """Decode --test held-out scenes of run K with --shots examples each, score, and save.

    The programs file needs scenes: shots come from its train rows and test images from its
    val/test rows (strop export RUN --split train,val); a file with one split is divided by
    the seed.
    """
    show_prompt = options.pop("show_prompt")
    cfg, secrets = config_from_options(DecodeConfig, options)
    if show_prompt:
        print_first_prompt(plan, cfg, secrets)
        return
    result = run_with_progress(decode, cfg, secrets)
    s = result.summary
    console.print(
        f"{result.folder}: n={s['n']} parse fails={s['parse_fails']} missing={s['missing']} "
        f"count err={fmt(s['count_err'])} attr acc={fmt(s['attr_acc'])} "
        f"pos MSE={fmt(s['pos_mse'])} pos MAE={fmt(s['pos_mae'])} AP@inf={fmt(s['ap']['inf'])}",
        highlight=False,
        soft_wrap=True,
    )
    fail_if_missing(s, result.folder, secrets)


# every option is a `Flag` on the config field it sets (strop.cli_options)
decode_command = commands.command("decode")(
    cli_options.command(_decode, DecodeConfig, CommandOptions)
)


def config_from_options(
    config_class: type[DecodeConfig], options: dict[str, Any], **fields: Any
) -> tuple[Any, list[str | None]]:
    """The validated config of a command's options (nested as the config nests them,
    `strop.cli_options.nest`; decode's, or another task's such as `qa` with `fields` for its
    own), and the secrets to keep out of every message (the API key, credentials in the URL);
    a bad option exits here, in one line."""
    o = dict(options)
    api_key_env, backend, base_url = o["api_key_env"], o["backend"], o.pop("base_url")
    secrets: list[str | None] = [read_api_key(api_key_env)]
    if base_url is not None:
        secrets += split_url_secrets(base_url)[1]
    if o["model"] is None:
        if backend not in ("naive", "knn"):
            fail("--model is required for the openai and vllm backends", secrets, usage=True)
        o["model"] = backend
    # unset: the environment's URL (OPENAI_BASE_URL), the preset's engine options
    given: dict[str, Any] = {"base_url": base_url} if base_url is not None else {}
    engine = {n: v for n, v in o.pop("engine").items() if v is not None and v is not False}
    protocol = o.pop("protocol")
    try:
        o["extra_body"] = parse_json_object("--extra-body", o["extra_body"])
    except BackendError as exc:
        fail(str(exc), secrets, usage=True)
    try:
        cfg = config_class(
            **o,
            **given,
            protocol=ProtocolConfig(**protocol),
            engine=VLLMEngineOptions.model_validate(engine),
            **fields,
        )
        secrets += split_url_secrets(cfg.base_url)[1]
        check_config(cfg)
    except ValidationError as exc:
        fail(f"option {error_line(exc.errors()[0], got=True)}", secrets, usage=True)
    except (PromptError, UsageError) as exc:  # a --template that is missing
        fail(str(exc), secrets, usage=True)
    except (RunFolderError, OutputPathError, BackendError) as exc:
        fail(str(exc), secrets)
    return cfg, secrets


def print_first_prompt(
    make_plan: Callable[[Any], Any], cfg: Any, secrets: list[str | None]
) -> None:
    """`--show-prompt`: the exact messages of the first test request, as JSON (no request)."""
    try:
        messages = make_plan(cfg).jobs[0].messages
    except PromptError as exc:
        fail(str(exc), secrets, usage=True)
    except (RunFolderError, OutputPathError, SceneFileError, BackendError) as exc:
        fail(str(exc), secrets)
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
            fail(str(exc), secrets, usage=True)
        except (RunFolderError, OutputPathError, SceneFileError, BackendError) as exc:
            progress.stop()
            fail(str(exc), secrets)
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
        fail(missing_message(folder, summary["missing"]), secrets)


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


def fmt(value: float | None) -> str:
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


class ReportOptions(BaseModel):
    """`strop-llm report`'s options."""

    runs: Annotated[Path, Flag()] = Field(
        Path("runs/clevr"), description="Experiment folder (or one run)."
    )


def report_command(values: dict[str, Any]) -> None:
    """Tabulate every llm/<model>/summary.json (and llm/qa/<model>/) under --runs; writes llm_report.md."""
    try:
        path, table = build_report(values["runs"])
    except (RunFolderError, OutputPathError) as exc:
        fail(str(exc), [])
        return
    Console().print(table)
    console.print(f"wrote {path}", highlight=False)


class PresetsOptions(BaseModel):
    """`strop-llm presets`' options."""

    gpus: Annotated[str | None, Flag()] = Field(
        None,
        description="The node's GPUs, e.g. 8xH100 or 1xH200: print the serve lines for it "
        "(default: every node the recipes cover).",
    )


def presets_command(values: dict[str, Any]) -> None:
    """Print every model preset: served id, thinking switch, sampling, and its `vllm serve` line."""
    gpus = values["gpus"]
    try:
        hardware = Hardware.parse(gpus) if gpus is not None else None
    except ValueError as exc:
        fail(str(exc), [], usage=True)
        return
    Console(soft_wrap=True).print(describe_presets(hardware), highlight=False, markup=False)


commands.command("report")(cli_options.command(report_command, ReportOptions))
commands.command("presets")(cli_options.command(presets_command, PresetsOptions))

# `strop-llm qa`: decode's options and machinery over questions (llm_decode.qa)
commands.command("qa")(make_qa_command(sys.modules[__name__], CommandOptions))

app = make_app(
    "strop-llm",
    __version__,
    "Few-shot decoding of CLEVR scenes (and answering questions about them) from STROP "
    "programs with LLMs, and the scores.",
    commands,
)

main = app  # the console script's entry point (a typer app is callable)

if __name__ == "__main__":
    main()
