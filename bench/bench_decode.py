"""Decoding harness speed against a local OpenAI-compatible server with a fixed answer delay.

Measurements (issue 6, "Speed"):
- throughput: with `--concurrency C` and a server that answers after `delay` seconds, the
  whole `decode` call (selection, prompts, requests, parsing, scoring, results, summary) should
  take about `requests * delay / C`; the row's ratio is measured / ideal (target <= 1.2).
  The delay (0.5 s) is still short for a 50-shot LLM answer; with a shorter one the Python
  CPU cost of client and test server (a few ms a request, more on a loaded machine) starts
  to show, since C requests' worth of it is paid per round of the delay.
- overhead: at concurrency 1 against a server with no delay, the per-request slope of the
  decode time (runs of two sizes, so fixed per-run costs cancel) minus the per-request time
  of the bare `openai` client sending the same messages to the same server: what the harness
  adds to each request (target < 5 ms). Both stream (the harness's default) with events kept
  as dicts; the fake server sends one event per word of the answer, ~100 events a request. The gated row uses this process's CPU time, which
  other processes on a shared machine barely disturb; the wall-time version is reported too.

`python -m bench.bench_decode` prints the table; `run()` returns the rows.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import openai

from llm_decode.backends.openai_compat import post_stream
from llm_decode.prompting import PromptBuilder, Shot
from llm_decode.protocol import ProtocolConfig, load_scene
from llm_decode.runner import DecodeConfig, decode
from llm_decode.testing.fake_server import FakeServer
from llm_decode.testing.synthetic import make_run
from strop.runs import read_programs


def _timed_decode(
    runs: Path, base_url: str, model: str, requests: int, concurrency: int
) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one complete `decode` call."""
    cfg = DecodeConfig(
        model=model,
        k=64,
        runs=runs,
        base_url=base_url,
        concurrency=concurrency,
        protocol=ProtocolConfig(shots=50, test=requests),
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = decode(cfg)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if result.summary["missing"] or result.sent != requests:
        raise RuntimeError(f"benchmark run incomplete: {result.summary['missing']} missing")
    return elapsed, cpu


def _messages_of(folder: Path) -> list[list[dict[str, str]]]:
    """Rebuild the messages of a finished benchmark run (results store codes, not prompts)."""
    summary = json.loads((folder / "summary.json").read_text())
    programs = read_programs(folder.parents[1] / "programs.parquet")
    shots = [
        Shot(programs.codes[i].tolist(), load_scene(programs, i, "bench"))
        for i in summary["protocol"]["shot_rows"]
    ]
    builder = PromptBuilder(codebook_size=64, shots=shots)
    return [builder.messages(programs.codes[i].tolist()) for i in summary["protocol"]["test_rows"]]


def _bare_client(folder: Path, base_url: str) -> tuple[float, float]:
    """Per-request (wall, CPU) seconds of the bare `openai` client sending a run's messages."""
    messages = _messages_of(folder)

    async def one(client: openai.AsyncOpenAI, m: list[dict[str, str]]) -> None:
        # streamed as the harness streams (events kept as dicts), so the difference is the
        # harness alone
        body = {"model": "m", "messages": m, "max_tokens": 8, "stream": True}
        body["stream_options"] = {"include_usage": True}
        stream = await post_stream(client, body)
        async with stream:
            async for _ in stream:
                pass

    async def loop() -> tuple[float, float]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
        await one(client, messages[0])
        start, cpu = time.perf_counter(), time.process_time()
        for m in messages:
            await one(client, m)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        await client.close()
        return elapsed / len(messages), cpu / len(messages)

    return asyncio.run(loop())


def _overhead(runs: Path, short: int, long: int, repeats: int) -> dict[str, float]:
    """Median per-request (wall, CPU) of decode and of the bare client, in seconds."""
    walls, cpus, bare_walls, bare_cpus = [], [], [], []
    with FakeServer(delay=0.0) as server:
        _timed_decode(runs, server.base_url, "warmup1", 4, 1)
        for rep in range(repeats):  # interleaved, so slow phases of the machine hit both
            w_short, c_short = _timed_decode(runs, server.base_url, f"short{rep}", short, 1)
            w_long, c_long = _timed_decode(runs, server.base_url, f"long{rep}", long, 1)
            walls.append((w_long - w_short) / (long - short))
            cpus.append((c_long - c_short) / (long - short))
            bare_wall, bare_cpu = _bare_client(runs / "k64" / "llm" / f"long{rep}", server.base_url)
            bare_walls.append(bare_wall)
            bare_cpus.append(bare_cpu)
    med = statistics.median
    return {
        "wall": med(walls),
        "cpu": med(cpus),
        "bare_wall": med(bare_walls),
        "bare_cpu": med(bare_cpus),
    }


def run(
    requests: int = 96,
    delay: float = 0.5,
    concurrency: int = 8,
    overhead_requests: tuple[int, int] = (10, 40),
    repeats: int = 3,
) -> list[dict]:
    """Rows {name, value, unit, baseline, ratio}: throughput, in-flight bound, overhead."""
    short, long = overhead_requests
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp) / "exp"
        make_run(runs / "k64", k=64, n_train=60, n_val=max(requests, long))
        with FakeServer(delay=delay) as server:
            _timed_decode(runs, server.base_url, "warmup", 4, concurrency)  # imports, caches
            wall, _ = _timed_decode(runs, server.base_url, "throughput", requests, concurrency)
            in_flight = server.stats()["max_in_flight"]
        o = _overhead(runs, short, long, repeats)
    ideal = requests * delay / concurrency
    cpu_ms = (o["cpu"] - o["bare_cpu"]) * 1000
    return [
        {
            "name": f"decode wall time ({requests} req x {delay:g} s, concurrency {concurrency})",
            "value": round(wall, 3),
            "unit": "s",
            "baseline": round(ideal, 3),
            "ratio": round(wall / ideal, 3),
        },
        {
            "name": "max requests in flight",
            "value": in_flight,
            "unit": "requests",
            "baseline": concurrency,
            "ratio": round(in_flight / concurrency, 3),
        },
        {
            "name": "round trip per request, bare openai client (info)",
            "value": round(o["bare_wall"] * 1000, 2),
            "unit": "ms",
            "baseline": None,
            "ratio": None,
        },
        {
            "name": "harness wall time per request over the bare client (info)",
            "value": round((o["wall"] - o["bare_wall"]) * 1000, 2),
            "unit": "ms",
            "baseline": None,
            "ratio": None,
        },
        {
            "name": "harness CPU time per request over the bare client",
            "value": round(cpu_ms, 2),
            "unit": "ms",
            "baseline": 5.0,
            "ratio": round(cpu_ms / 5.0, 3),
        },
    ]


def _print(rows: list[dict]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'unit':<8}  {'baseline':>9}  {'ratio':>6}")
    for r in rows:
        base = "-" if r["baseline"] is None else r["baseline"]
        ratio = "-" if r["ratio"] is None else r["ratio"]
        print(f"{r['name']:<{width}}  {r['value']:>10}  {r['unit']:<8}  {base:>9}  {ratio:>6}")


if __name__ == "__main__":
    _print(run())
