"""`strop-llm decode`'s configuration: `DecodeConfig`, validated at the edge, and the checks of a
command line that need no run (`check_config`, `parse_json_object`).

The server is `--base-url`, else `OPENAI_BASE_URL`, else vLLM's default local address, as the
OpenAI SDK ecosystem expects; the key is read from `--api-key-env` (`OPENAI_API_KEY`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_decode.backends.base import BackendError, redact
from llm_decode.backends.baselines import DEFAULT_NAIVE, NaiveDefinition
from llm_decode.backends.transport import TransportOptions, same_field
from llm_decode.backends.vllm_offline import VLLMEngineOptions
from llm_decode.presets import PER_REPLICA_CONCURRENCY
from llm_decode.protocol import ProtocolConfig
from llm_decode.scoring import ScoringOptions
from strop.cli_options import Flag, FlagGroup

BackendName = Literal["openai", "vllm", "naive", "knn"]
#: `--template`'s help, naming the task's own template
TEMPLATE_HELP = (
    "Jinja template replacing prompts/{}. It is rendered with full Jinja, which can run code: "
    "use only your own templates."
)
#: vLLM's OpenAI-compatible server on this machine, when neither flag nor environment says
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


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


class UsageError(ValueError):
    """A command line that cannot work (a missing --template file): exit 2, one line."""


def check_config(cfg: DecodeConfig) -> None:
    """Fail at the edge, before any request, on what can be checked without the run."""
    if cfg.template is not None and not Path(cfg.template).is_file():
        raise UsageError(f"--template {cfg.template}: template file not found")
    if cfg.backend == "openai" and not cfg.base_url.startswith(("http://", "https://")):
        raise BackendError(f"--base-url {redact(cfg.base_url)!r}: expected http(s)://HOST:PORT/v1")
