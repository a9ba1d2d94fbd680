"""Rule selection across the task family: every optimizer on every simulated task and seed (scripted LMs, NOT real
models), judged by the oracle accuracy of the program it returns.

    python -m benchmarks family                                    # everything: 10 tasks x 8 optimizers x seeds 0-9
    python -m benchmarks family --optimizers cd-light --tasks diffuse-issue,today --seeds 0-4 --jobs 2
    python -m benchmarks family --optimizers cd-light,cd-medium --cd-kwargs '{"screen_size": 0}' \\
        --reference benchmarks/results/family_before.json         # CD only; DSPy rows taken from an earlier run

Per task and optimizer it reports the oracle (analytic expected) accuracy of the returned program, its accuracy on
the task's separate test split with a 95% CI over seeds, helpful-rule recall, harmful-rule acceptance, student and
proposer/teacher calls (counted at the engines, caches off) and wall time, and checks issue 6's targets per task.
Each run is deterministic given its task and seed; runs are spread over ``--jobs`` processes. Results go to
``benchmarks/results/local/family.{json,md,csv}`` (untracked) unless ``--out`` names another path. ``--reference``
fills the rows of DSPy optimizers that were not run from an earlier JSON, when its task definitions match (DSPy's
optimizers do not depend on this library, so their rows stay valid while ConceptDistillation changes).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: offline price table
os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the runs

import argparse
import json
import logging
import shlex
from pathlib import Path

from ..harness.optimizers import OPTIMIZERS
from ..harness.paths import shown
from ..harness.simulated import family
from ..harness.simulated.family_report import targets_table
from ..harness.simulated.tasks import TASKS, TASKS_BY_NAME
from .arguments import parse_list, parse_seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", help=f"comma-separated task names (default: all): {', '.join(TASKS_BY_NAME)}")
    parser.add_argument("--optimizers", help=f"comma-separated (default: all): {', '.join(OPTIMIZERS)}")
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9, 0,3,5 or 0-4,7 (default 0-9)")
    parser.add_argument("--cd-kwargs", default="{}", help="JSON of extra ConceptDistillation arguments")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--threads", type=int, default=4, help="num_threads given to each optimizer (default 4)")
    parser.add_argument("--out", type=Path, help=f"output path without suffix (default {shown(family.DEFAULT_OUT)})")
    parser.add_argument("--reference", type=Path, help="earlier family JSON to take missing DSPy optimizer rows from")
    parser.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    parser.add_argument("--render", type=Path, help="summarize the runs stored in an earlier JSON again (no runs)")
    parser.add_argument("--list", action="store_true", help="print the tasks and optimizers and exit")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    family.logger.setLevel(logging.INFO)
    if args.list:
        for task in TASKS:
            print(f"{task.name}: {task.summary}")
        print("optimizers: " + ", ".join(OPTIMIZERS))
        return 0
    if args.render:
        payload = family.rerender(args.render, f"python -m benchmarks family --render {shlex.quote(str(args.render))}")
        base = (args.out or args.render).with_suffix("")
    else:
        payload = family.measure(
            parse_list(args.tasks, list(TASKS_BY_NAME), "tasks"), parse_list(args.optimizers, list(OPTIMIZERS),
                                                                             "optimizers"),
            parse_seeds(args.seeds), seeds_label=args.seeds, cd_kwargs=json.loads(args.cd_kwargs), jobs=args.jobs,
            threads=args.threads, reference=args.reference, command=args.command_line)
        base = args.out.with_suffix("") if args.out else family.DEFAULT_OUT
    payload["meta"]["notes"] = [*payload["meta"]["notes"], *(n for n in args.note if n not in payload["meta"]["notes"])]
    family.write(payload, base)
    print("\n".join(targets_table(payload["targets"])))
    print(f"\nwrote {base}.json, .md and .csv ({payload['meta']['wall_seconds']:.0f} s of runs)")
    return 0
