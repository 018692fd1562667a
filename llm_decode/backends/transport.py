"""The HTTP transport's options, declared once: the backend, `DecodeConfig` and the CLI read
each option's default and help from here (the timeout used to be declared three times and
could drift)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo


class TransportOptions(BaseModel):
    """How requests are sent, waited for and retried (any OpenAI-compatible server)."""

    model_config = ConfigDict(extra="forbid")

    stream: bool = Field(True, description="Stream answers (the idle limit needs it).")
    timeout: float = Field(
        120.0, gt=0, description="Idle limit: seconds without a byte of the answer."
    )
    min_tokens_per_s: float = Field(
        10.0,
        gt=0,
        description="Slowest plausible rate; sets the deadline per attempt: "
        "timeout + max_tokens / this.",
    )
    max_attempts: int = Field(5, ge=1, description="Transport attempts per request.")
    long_retries: int = Field(
        1, ge=0, description="Retries of an attempt that failed after output had started."
    )
    backoff_base: float = Field(1.0, ge=0, description="Delay before the 2nd attempt, seconds.")
    backoff_cap: float = Field(30.0, ge=0, description="Largest computed delay, seconds.")


def same_field(model: type[BaseModel], name: str) -> Any:
    """`model`'s declaration of `name` (default, bounds, help), to reuse in another model."""
    info: FieldInfo = model.model_fields[name]
    return info
