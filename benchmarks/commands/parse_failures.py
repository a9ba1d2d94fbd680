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

    python -m benchmarks parse-failures --n 20

Writes benchmarks/results/local/parse_failures.json (untracked; pass ``--out
benchmarks/results/parse_failures.json`` to update the committed results) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..harness.paths import shown
from ..harness.real import parse_failures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=20, help="number of MultiArith questions (first N)")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion budget per call")
    parser.add_argument("--data", type=Path, default=parse_failures.DEFAULT_DATA, help="path to MultiArith.json")
    parser.add_argument("--out", type=Path, default=parse_failures.DEFAULT_OUT,
                        help=f"where to write the JSON results (default {shown(parse_failures.DEFAULT_OUT)})")
    parser.add_argument("--setups", nargs="+", default=list(parse_failures.SETUPS),
                        choices=list(parse_failures.SETUPS))
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads, in process and in the server (default: every core; 1 on a crowded "
                             "machine, where spinning threads wait on each other)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    report = parse_failures.measure(args.setups, n=args.n, max_tokens=args.max_tokens, data=args.data,
                                    threads=args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(parse_failures.table(report))
    print(f"wrote {shown(args.out)}")
    return 0
