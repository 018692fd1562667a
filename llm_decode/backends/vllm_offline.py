"""vLLM's offline engine (`vllm.LLM`), for a GPU node without a server.

Design decisions
- vLLM (and with it torch) is imported only when this backend is built, so the rest of
  `llm_decode` stays torch-free; a missing install is a one-line `BackendError` that names the
  extra to install and the server alternative.
- The engine batches best when given every request at once, so this backend implements
  `complete_batch` rather than the per-request `complete` the HTTP backend has; the runner
  sends the whole batch, then a second batch of repairs for parse failures.
- Structured output uses `StructuredOutputsParams` (vLLM >= 0.11) and falls back to the older
  `GuidedDecodingParams`; reasoning is recovered from `<think>` blocks in the text, since the
  offline engine has no reasoning parser.
"""

from __future__ import annotations

import time
from typing import Any

from llm_decode.backends.base import BackendError, Completion, Message
from llm_decode.schema import split_reasoning


class VLLMBackend:
    """Batched chat generation with a local `vllm.LLM` engine."""

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 2048,
        seed: int = 0,
        response_schema: dict[str, Any] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        try:
            import vllm
        except ImportError:
            raise BackendError(
                "the vllm backend needs vLLM installed (pip install 'strop-toolkit[vllm]'); "
                "or start `vllm serve MODEL` and use --backend openai --base-url http://HOST:8000/v1"
            ) from None
        self.endpoint = f"vllm-offline:{model}"
        self._llm = vllm.LLM(model=model, seed=seed, **(engine_kwargs or {}))
        self._params = vllm.SamplingParams(
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            **_structured_kwargs(response_schema),
        )

    def complete_batch(self, batch: list[list[Message]]) -> list[Completion]:
        start = time.perf_counter()
        outputs = self._llm.chat(batch, self._params, use_tqdm=False)
        latency = (time.perf_counter() - start) / max(len(batch), 1)
        completions = []
        for out in outputs:
            first = out.outputs[0]
            text, reasoning = split_reasoning(first.text)
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
