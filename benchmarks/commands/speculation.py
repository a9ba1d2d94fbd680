"""How to run it:

    python -m benchmarks speculation                                  # every task, seeds 0-4, light and medium
    python -m benchmarks speculation --tasks diffuse-noisy --seeds 0-9 --threads 1,16,32 --jobs 2

Results go to ``benchmarks/results/local/speculation.{json,md}`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: offline price table
os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the runs

import argparse
from pathlib import Path

from ..harness.paths import shown
from ..harness.simulated import speculation
from ..harness.simulated.tasks import TASKS_BY_NAME
from .arguments import parse_list, parse_seeds

# the help: what is measured (said once, in the harness module), then how to run it
__doc__ = f"{speculation.__doc__}\n{__doc__}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", help=f"comma-separated task names (default: all): {', '.join(TASKS_BY_NAME)}")
    parser.add_argument("--presets", default=",".join(speculation.PRESETS),
                        help="comma-separated: cd-light, cd-medium, cd-heavy")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-9, 0,3,5 (default 0-4)")
    parser.add_argument("--threads", default="1,16", help="thread counts; the first is the reference (default 1,16)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--out", type=Path, default=speculation.DEFAULT_OUT,
                        help=f"output path without suffix (.json and .md; default {shown(speculation.DEFAULT_OUT)})")


def run(args: argparse.Namespace) -> int:
    payload = speculation.measure(
        parse_list(args.tasks, list(TASKS_BY_NAME), "tasks"),
        parse_list(args.presets, ["cd-light", "cd-medium", "cd-heavy"], "presets"), parse_seeds(args.seeds),
        [int(t) for t in args.threads.split(",")], seeds_label=args.seeds, jobs=args.jobs, command=args.command_line)
    speculation.write(payload, args.out)
    print(speculation.markdown(payload))
    return 0
