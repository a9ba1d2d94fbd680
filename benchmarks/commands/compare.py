"""How many student-LM calls DSPy's own optimizers spend on the simulated task ConceptDistillation solves, and
whether each one reaches the best rule set (scripted student, teacher and proposer: NOT real models).

    python -m benchmarks compare [--seeds 0 1 2] [--flip-rate 0.0] [--out benchmarks/results/compare_optimizers.json]

Also writes the Markdown table next to the JSON file and prints it; progress goes to the log on stderr. Without
``--out`` it writes benchmarks/results/local/compare_optimizers.json (untracked); the committed results in
benchmarks/results/ change only when named with ``--out``. ``python -m benchmarks family`` runs the same optimizers
over the whole task family; this command keeps the original single-task claim check.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..harness.optimizers import NUM_THREADS
from ..harness.paths import shown
from ..harness.simulated import compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--flip-rate", type=float, default=0.0, help="the simulated student's answer noise")
    parser.add_argument("--out", type=Path, default=compare.DEFAULT_OUT,
                        help=f"JSON results; the .md goes next to it (default {shown(compare.DEFAULT_OUT)})")
    parser.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the smallest COPRO and InferRules settings")
    parser.add_argument("--threads", type=int, default=NUM_THREADS)
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    compare.logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    print(compare.measure(args.seeds, flip_rate=args.flip_rate, extras=args.extras, num_threads=args.threads,
                          out=args.out))
    return 0
