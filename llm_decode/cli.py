"""`strop-llm`: decode CLEVR scenes from STROP programs with LLMs, and tabulate the results.

Design decisions
- Options map one-to-one onto `DecodeConfig` fields; pydantic validates them, and every
  failure at the edge is printed as one line, never a traceback, and never with the API key
  in it: a bad option or template exits 2 (usage); a run folder, scenes file or backend that
  fails exits 1 (the work failed), as in every STROP tool (`strop.cli_app`).
- The progress bar counts done and failed requests and shows completion tokens per second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, cast

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llm_decode import __version__
from llm_decode.backends.base import BackendError, redact
from llm_decode.prompting import PromptError
from llm_decode.protocol import ProtocolConfig
from llm_decode.report import build_report
from llm_decode.runner import DecodeConfig, DecodeInterrupted, check_config, decode
from strop.cli_app import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Commands, make_app
from strop.runs import RunFolderError
from strop.scenes import SceneFileError

commands = Commands()
console = Console(stderr=True)


def _fail(message: str, secrets: list[str | None], *, usage: bool = False) -> None:
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
    base_url: str = typer.Option(
        "http://127.0.0.1:8000/v1", "--base-url", help="OpenAI-compatible server root."
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
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request attempt."),
    max_attempts: int = typer.Option(5, "--max-attempts", help="Transport attempts per request."),
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
        None, "--think/--no-think", help="Reasoning suffix; default: the preset's."
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
    secret = os.environ.get(api_key_env)
    if model is None:
        if backend not in ("naive", "knn"):
            _fail("--model is required for the openai and vllm backends", [secret], usage=True)
        model = backend
    try:
        cfg = DecodeConfig(
            model=model,
            k=k,
            runs=runs,
            backend=cast(Any, backend),  # a plain str here; pydantic validates the Literal
            base_url=base_url,
            api_key_env=api_key_env,
            served_id=served_id,
            protocol=ProtocolConfig(
                shots=shots,
                test=test,
                seed=seed,
                temperature=temperature,
                parse_retries=parse_retries,
                permute_codes=permute_codes,
            ),
            concurrency=concurrency,
            timeout=timeout,
            max_attempts=max_attempts,
            structured=structured,
            template=template,
            max_tokens=max_tokens,
            think=think,
            scoring={"matching": matching, "position_error": position_error},
            naive=naive,  # type: ignore[arg-type]  (validated by pydantic)
        )
        check_config(cfg)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        _fail(f"option {field}: {err['msg']} (got {err.get('input')!r})", [secret], usage=True)
        return
    except (RunFolderError, BackendError) as exc:
        _fail(str(exc), [secret])
        return

    with _DecodeProgress(f"{model} K={k}") as progress:
        try:
            result = decode(cfg, on_row=progress.row, on_start=progress.start)
        except PromptError as exc:  # the template given on the command line
            progress.stop()
            _fail(str(exc), [secret], usage=True)
            return
        except (RunFolderError, SceneFileError, BackendError) as exc:
            progress.stop()
            _fail(str(exc), [secret])
            return
        except DecodeInterrupted as exc:
            progress.stop()
            console.print(f"[yellow]{escape(str(exc))}[/yellow]", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    s = result.summary
    console.print(
        f"{result.folder}: n={s['n']} parse fails={s['parse_fails']} missing={s['missing']} "
        f"count err={_fmt(s['count_err'])} attr acc={_fmt(s['attr_acc'])} "
        f"pos MSE={_fmt(s['pos_mse'])} pos MAE={_fmt(s['pos_mae'])} AP@inf={_fmt(s['ap']['inf'])}",
        highlight=False,
        soft_wrap=True,
    )
    if s["missing"]:
        first = f" (last error: {progress.last_error})" if progress.last_error else ""
        _fail(
            f"{s['missing']} requests failed{first}; rerun the same command to finish them",
            [secret],
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


class _DecodeProgress:
    """Rich progress: done / failed counts and completion tokens per second."""

    def __init__(self, label: str) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done {task.fields[done]} failed {task.fields[failed]}"),
            TextColumn("{task.fields[tps]:.1f} tok/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.label = label
        self.task: Any = None
        self.done = self.failed = self.tokens = 0
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
            self.label, total=total, completed=already, done=already, failed=0, tps=0.0
        )

    def row(self, row: dict[str, Any]) -> None:
        if row["status"] == "error":
            self.failed += 1
            self.last_error = row["error"]
        else:
            self.done += 1
        self.tokens += int(row.get("usage", {}).get("completion_tokens", 0))
        tps = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.progress.update(
            self.task,
            advance=1,
            done=self.done,
            failed=self.failed,
            tps=tps,
        )


@commands.command("report")
def report_command(
    runs: Path = typer.Option(Path("runs/clevr"), "--runs", help="Experiment folder (or one run)."),
) -> None:
    """Tabulate every llm/<model>/summary.json under --runs; writes llm_report.md there."""
    try:
        path, table = build_report(runs)
    except RunFolderError as exc:
        _fail(str(exc), [])
        return
    Console().print(table)
    console.print(f"wrote {path}", highlight=False)


app = make_app(
    "strop-llm",
    __version__,
    "Few-shot decoding of CLEVR scenes from STROP programs with LLMs, and its scores.",
    commands,
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
