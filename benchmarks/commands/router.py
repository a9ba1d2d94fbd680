"""Throughput of a student behind one llama.cpp server vs. a LiteLLM Router over two, measured in one run.

The same cores are shared out both ways: one server with ``--cores`` threads, or two servers with half as
many each behind ``router_lm`` (least-busy routing). Both are sent the same distinct prompts from
``--concurrency`` client threads (temperature 0, cache off), alternating the two set-ups ``--rounds`` times
so a load change on the machine hits both. The ratio is requests per second of the two servers over one.

    python -m benchmarks router                 # needs the local extra: pip install -e ".[local]"

Writes benchmarks/results/local/router_throughput.json (untracked; ``--out`` elsewhere) and prints a table. On a
machine whose cores are already busy, expect little gain: two llama.cpp processes mainly win when one process
leaves cores idle (prompt evaluation and sampling between tokens are partly serial).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..harness.paths import shown
from ..harness.real import router


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=12, help="prompts per set-up per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two set-ups")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads sending requests")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion budget per request")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2, help="threads for the single server; "
                        "each of the two servers gets half")
    parser.add_argument("--out", type=Path, default=router.DEFAULT_OUT,
                        help=f"where to write the JSON results (default {shown(router.DEFAULT_OUT)})")


def run(args: argparse.Namespace) -> int:
    report = router.report(command=args.command_line, requests=args.requests, rounds=args.rounds,
                           concurrency=args.concurrency, max_tokens=args.max_tokens, cores=args.cores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(router.table(report))
    print(f"wrote {shown(args.out)}")
    return 0
