"""How many copies of the model an OpenAI-compatible server runs, to keep them all busy.

A vLLM server started with `--data-parallel-size N` runs N engines behind one endpoint; one
client with 8 requests in flight would leave most of them idle. The count is read from the
server's Prometheus endpoint (`<root>/metrics`, beside `/v1`), where vLLM labels every engine
metric with its engine index: `vllm:num_requests_running{engine="3",model_name="..."}`.

Checked against vLLM's v1 `PrometheusStatLogger` (vllm/v1/metrics/loggers.py: `labelnames =
["model_name", "engine"]`, one label value per engine index of the data-parallel group) and
its data-parallel deployment guide (docs.vllm.ai/en/latest/serving/data_parallel_deployment).

Design decisions
- A server that has no such endpoint (OpenAI, a proxy, `transformers serve`), answers
  something else, or is not reachable within the timeout counts as one copy: the count only
  raises the default, it never fails a run, and the decode itself reports a dead server.
- vLLM metrics without an `engine` label (older servers) are one engine.
- The key is not sent: vLLM serves `/metrics` without it, and a third-party host's other
  paths have no business seeing it.
"""

from __future__ import annotations

import re

import httpx

_ENGINE = re.compile(r'^vllm:[A-Za-z0-9_:]+\{[^}]*\bengine="([^"]*)"', re.MULTILINE)
_VLLM_METRIC = re.compile(r"^vllm:", re.MULTILINE)


def metrics_url(base_url: str) -> str:
    """The Prometheus endpoint beside the API root (`http://h:8000/v1` -> `http://h:8000/metrics`)."""
    root = base_url.rstrip("/")
    root = root.removesuffix("/v1")
    return f"{root}/metrics"


def engines_in(metrics: str) -> int | None:
    """Engines named in a Prometheus text page of vLLM's, or None if it is not vLLM's."""
    engines = set(_ENGINE.findall(metrics))
    if engines:
        return len(engines)
    return 1 if _VLLM_METRIC.search(metrics) else None


def server_replicas(base_url: str, timeout: float = 5.0) -> int | None:
    """Copies of the model the server at `base_url` runs, or None when it does not say."""
    try:
        response = httpx.get(metrics_url(base_url), timeout=timeout, follow_redirects=False)
    except (httpx.HTTPError, ValueError):
        return None
    if response.status_code != 200:
        return None
    return engines_in(response.text)
