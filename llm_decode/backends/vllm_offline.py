"""vLLM's offline engine (`vllm.LLM`), for a GPU node without a server.

Design decisions
- vLLM (and with it torch) is imported only when this backend is built, so the rest of
  `llm_decode` stays torch-free; a missing install is a one-line `BackendError` that names the
  extra to install and the server alternative.
- Engine options are the `vllm serve` flags a preset needs (`VLLMEngineOptions`), passed to
  `vllm.LLM` under their engine-argument names (every `vllm serve` engine flag is an
  `EngineArgs` field of the same name), so a preset's serve line and its offline run agree.
- The engine batches best when given many requests at once, so this backend implements
  `complete_batch`; the runner feeds it `batch_size` requests at a time and writes each
  batch's rows before the next starts, so a crash loses at most the batch in progress.
  Any exception from the engine becomes one `BackendError` line (type and message), raised
  after the rows already answered are on disk.
- The thinking switch is the preset's `chat_template_kwargs` (gpt-oss's `reasoning_effort` is
  a template variable too). The offline engine returns raw text, so reasoning is split here:
  `<think>` blocks and Harmony channels (`reasoning.py`); a reasoning parser only tells the
  structured-output grammar where thinking ends.
- Structured output uses `StructuredOutputsParams` (vLLM >= 0.11) and falls back to the older
  `GuidedDecodingParams`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from llm_decode.backends.base import BackendError, Completion, Message, one_line
from llm_decode.reasoning import split_output
from strop.cli_options import Flag


class VLLMEngineOptions(BaseModel):
    """Options of the offline engine; the names are `vllm serve`'s flags."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: Annotated[int, Flag()] = Field(
        1, ge=1, description="GPUs the model is sharded over."
    )
    max_model_len: Annotated[int | None, Flag()] = Field(
        None, ge=1, description="Context length; None: model's."
    )
    gpu_memory_utilization: Annotated[float, Flag()] = Field(
        0.9, gt=0, le=1, description="Fraction of each GPU's memory the engine may take."
    )
    reasoning_parser: Annotated[str | None, Flag()] = Field(
        None, description="Where thinking ends for structured output (qwen3, deepseek_v3, ...)."
    )
    trust_remote_code: Annotated[bool, Flag(default=False)] = Field(
        False, description="Run the model repository's own code."
    )
    batch_size: Annotated[int, Flag()] = Field(
        64, ge=1, description="Requests per engine call; rows saved per batch."
    )

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vllm.LLM` (unset options left to vLLM's defaults)."""
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "trust_remote_code": self.trust_remote_code,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.reasoning_parser:
            kwargs["reasoning_parser"] = self.reasoning_parser
        return kwargs


class VLLMBackend:
    """Batched chat generation with a `vllm.LLM` engine (or anything with its `chat`)."""

    def __init__(
        self,
        engine: Any,
        sampling_params: Any,
        *,
        endpoint: str,
        chat_template_kwargs: dict[str, Any] | None = None,
        harmony: bool = False,
        batch_size: int = 64,
    ) -> None:
        self._llm = engine
        self._params = sampling_params
        self.endpoint = endpoint
        self.batch_size = batch_size
        self._template_kwargs = chat_template_kwargs or {}
        self._harmony = harmony

    @classmethod
    def create(
        cls,
        model: str,
        *,
        options: VLLMEngineOptions,
        sampling: dict[str, Any],
        max_tokens: int,
        seed: int = 0,
        response_schema: dict[str, Any] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        harmony: bool = False,
    ) -> VLLMBackend:
        """Import vLLM and start the engine; every failure is one `BackendError` line."""
        try:
            import vllm
        except ImportError:
            raise BackendError(
                "the vllm backend needs vLLM installed (pip install 'strop-toolkit[vllm]'); "
                "or start `vllm serve MODEL` and use --backend openai --base-url http://HOST:8000/v1"
            ) from None
        try:
            engine = vllm.LLM(model=model, seed=seed, **options.llm_kwargs())
            params = vllm.SamplingParams(
                **sampling, max_tokens=max_tokens, seed=seed, **_structured_kwargs(response_schema)
            )
        except Exception as exc:  # engine start-up: OOM, bad option, unknown model ...
            raise BackendError(
                one_line(f"vLLM engine for {model} failed to start: {type(exc).__name__}: {exc}")
            ) from None
        return cls(
            engine,
            params,
            endpoint=f"vllm-offline:{model}",
            chat_template_kwargs=chat_template_kwargs,
            harmony=harmony,
            batch_size=options.batch_size,
        )

    def complete_batch(self, batch: list[list[Message]]) -> list[Completion]:
        start = time.perf_counter()
        kwargs: dict[str, Any] = {"use_tqdm": False}
        if self._template_kwargs:
            kwargs["chat_template_kwargs"] = self._template_kwargs
        outputs = self._llm.chat(batch, self._params, **kwargs)
        latency = (time.perf_counter() - start) / max(len(batch), 1)
        if len(outputs) != len(batch):
            raise RuntimeError(f"the engine returned {len(outputs)} outputs for {len(batch)}")
        completions = []
        for out in outputs:
            first = out.outputs[0]
            text, reasoning = split_output(first.text, harmony=self._harmony)
            completions.append(
                Completion(
                    text=text,
                    reasoning=reasoning,
                    usage={
                        "prompt_tokens": len(out.prompt_token_ids or []),
                        "completion_tokens": len(first.token_ids),
                    },
                    latency_s=latency,
                    finish_reason=first.finish_reason,
                )
            )
        return completions

    async def aclose(self) -> None:
        return None


def _structured_kwargs(schema: dict[str, Any] | None) -> dict[str, Any]:
    if schema is None:
        return {}
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=schema)}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
