"""How to run it:

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

# the help: what is measured (said once, in the harness module), then how to run it
__doc__ = f"{parse_failures.__doc__}\n{__doc__}"


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
