"""How often does a tiny local model break DSPy's output format, with and without constrained decoding?

Runs SmolLM2-135M-Instruct (llama.cpp, temperature 0) through ``dspy.Predict("question -> answer: float")`` on the
first N MultiArith questions, under these set-ups (the first three in process, the others over HTTP):

* ``chat``          ChatAdapter, unconstrained engine, ChatAdapter's own retry through JSONAdapter on a parse failure
                    (DSPy's default behaviour; the retry is unconstrained too, because the engine declares no
                    response-format support).
* ``chat-no-retry`` the same without the JSONAdapter retry: how often the model follows ChatAdapter's format at all.
* ``json-grammar``  JSONAdapter, whose JSON schema for the signature reaches llama.cpp as a grammar.
* ``http-json-object`` JSONAdapter through LiteLLM to llama-cpp-python's OpenAI-compatible server, with the plain
                    ``openai/<name>`` LM: DSPy asks only for ``{"type": "json_object"}`` (any JSON). The state before
                    ``openai_compatible_lm``.
* ``http-json-schema`` the same with ``server.lm()``, which declares schema support: the signature's JSON schema goes
                    over the wire and the server's grammar follows it.
* ``http-chat``, ``http-chat-schema`` DSPy's default ChatAdapter over HTTP with each of those two LMs: its first try is
                    free text, and its JSONAdapter retry asks for ``json_object`` or sends the schema.

Predict, not ChainOfThought: the question here is format adherence, and a reasoning field would need far more
tokens before the answer, so small budgets would turn truncation into parse failures and blur the comparison.

Run by ``python -m benchmarks parse-failures``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy

from dspy_concept_distill.lms import LlamaCppEngine, OpenAIServer, default_model_path, start_server

from ..paths import LOCAL_RESULTS, SHIPPED_DATA

DEFAULT_DATA = SHIPPED_DATA / "multiarith" / "MultiArith.json"  # the copy shipped in the repo
DEFAULT_OUT = LOCAL_RESULTS / "parse_failures.json"  # untracked; benchmarks/results/ changes only with --out

SETUPS: dict[str, dict[str, Any]] = {
    "chat": {"adapter": "ChatAdapter", "json_fallback": True, "constrained": False},
    "chat-no-retry": {"adapter": "ChatAdapter", "json_fallback": False, "constrained": False},
    "json-grammar": {"adapter": "JSONAdapter", "json_fallback": None, "constrained": True},
    "http-json-object": {"adapter": "JSONAdapter", "json_fallback": None, "constrained": False, "transport": "http"},
    "http-json-schema": {"adapter": "JSONAdapter", "json_fallback": None, "constrained": True, "transport": "http"},
    "http-chat": {"adapter": "ChatAdapter", "json_fallback": True, "constrained": False, "transport": "http"},
    "http-chat-schema": {"adapter": "ChatAdapter", "json_fallback": True, "constrained": True, "transport": "http"},
}


def load_multiarith(path: Path, n: int) -> list[dspy.Example]:
    """The first ``n`` MultiArith problems as examples with ``question`` and a float ``answer``."""
    from datasets import load_dataset

    if not path.is_file():
        raise SystemExit(f"MultiArith not found at {path}; pass --data PATH to MultiArith.json")
    rows = load_dataset("json", data_files=str(path), split="train")
    rows = rows.select(range(min(n, len(rows))))
    return [dspy.Example(question=row["sQuestion"].strip(), answer=float(row["lSolutions"][0])).with_inputs("question")
            for row in rows]


def is_correct(predicted: Any, gold: float) -> bool:
    try:
        return math.isclose(float(predicted), gold, rel_tol=1e-6, abs_tol=1e-6)
    except (TypeError, ValueError):
        return False


def make_lm(name: str, *, max_tokens: int, model_path: Path, server: OpenAIServer | None,
            threads: int | None) -> dspy.LM:
    """The set-up's LM: an in-process engine, or LiteLLM to the server (schema declared or not)."""
    setup = SETUPS[name]
    if setup.get("transport") == "http":
        assert server is not None, "HTTP set-ups need a running server"
        return server.lm(structured_outputs=setup["constrained"], temperature=0.0, max_tokens=max_tokens, cache=False)
    engine = LlamaCppEngine(model_path, n_ctx=2048, n_threads=threads, constrained=setup["constrained"])
    return dspy.LM(f"local/smollm2-135m-{name}", engine=engine, temperature=0.0, max_tokens=max_tokens, cache=False)


def run_setup(name: str, examples: list[dspy.Example], *, max_tokens: int, model_path: Path,
              server: OpenAIServer | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run one set-up over the examples; return counts and per-example records."""
    setup = {"transport": "in-process", **SETUPS[name]}
    lm = make_lm(name, max_tokens=max_tokens, model_path=model_path, server=server, threads=threads)
    if setup["adapter"] == "JSONAdapter":
        adapter = dspy.JSONAdapter()
    else:
        adapter = dspy.ChatAdapter(use_json_adapter_fallback=setup["json_fallback"])
    predict = dspy.Predict("question -> answer: float")
    records, failures, correct = [], 0, 0
    start = time.perf_counter()
    with dspy.context(lm=lm, adapter=adapter):
        for example in examples:
            calls_before = len(lm.history)
            try:
                answer: Any = predict(question=example.question).answer
                parsed = True
            except dspy.utils.exceptions.AdapterParseError:
                answer, parsed = None, False
            ok = parsed and is_correct(answer, example.answer)
            failures += not parsed
            correct += ok
            calls = lm.history[calls_before:]
            records.append({"gold": example.answer, "answer": answer, "parsed": parsed, "correct": ok,
                            "lm_calls": len(calls), "raw": [c["outputs"][0] if c["outputs"] else "" for c in calls]})
    seconds = time.perf_counter() - start
    usage = [entry["usage"] for entry in lm.history]
    return {
        **setup,
        "model_string": lm.model,
        "examples": len(examples),
        "parse_failures": failures,
        "correct": correct,
        "lm_calls": len(lm.history),
        "prompt_tokens": sum(u.get("prompt_tokens") or 0 for u in usage),
        "completion_tokens": sum(u.get("completion_tokens") or 0 for u in usage),
        "seconds": round(seconds, 1),
        "records": records,
    }


def measure(setups: list[str], *, n: int, max_tokens: int, data: Path, threads: int | None) -> dict[str, Any]:
    """Every set-up in ``setups`` on the first ``n`` MultiArith problems (a server started for the HTTP ones);
    the report."""
    logging.getLogger("dspy").setLevel(logging.ERROR)  # one truncation/parse warning per example is noise here
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    examples = load_multiarith(data, n)
    model_path = default_model_path()
    over_http = any(SETUPS[name].get("transport") == "http" for name in setups)
    serving = start_server(model_path, n_ctx=2048, n_threads=threads) if over_http else None
    with serving or contextlib.nullcontext() as server:
        results = {name: run_setup(name, examples, max_tokens=max_tokens, model_path=model_path, server=server,
                                   threads=threads) for name in setups}
    return {
        "task": "MultiArith (first N problems)",
        "program": 'dspy.Predict("question -> answer: float")',
        "model": model_path.name,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "threads": threads,
        "n": len(examples),
        "dspy": dspy.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setups": results,
    }


def table(report: dict[str, Any]) -> str:
    """The terminal table: parse failures, correct answers, LM calls and time per set-up."""
    lines = [f"SmolLM2-135M on the first {report['n']} MultiArith problems, Predict('question -> answer: float'), "
             f"temperature 0, max_tokens {report['max_tokens']}",
             f"{'set-up':<17} {'transport':<11} {'adapter':<12} {'schema':<7} {'parse failures':>15} {'correct':>8} "
             f"{'LM calls':>9} {'seconds':>8}"]
    for name, r in report["setups"].items():
        lines.append(f"{name:<17} {r['transport']:<11} {r['adapter']:<12} {'yes' if r['constrained'] else 'no':<7} "
                     f"{r['parse_failures']:>9}/{r['examples']:<5} {r['correct']:>8} {r['lm_calls']:>9} "
                     f"{r['seconds']:>8}")
    return "\n".join(lines)
