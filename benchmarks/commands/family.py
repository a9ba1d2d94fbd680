"""Rule selection across the task family: every optimizer on every simulated task and seed (scripted LMs, NOT real
models), judged by the oracle accuracy of the program it returns.

    python -m benchmarks family                                    # everything: 16 tasks x 8 optimizers x seeds 0-9
    python -m benchmarks family --optimizers cd-light --tasks diffuse-issue,today --seeds 0-4 --jobs 2
    python -m benchmarks family --optimizers cd-light,cd-medium --seeds 0-29 --jobs 2 \\
        --reference benchmarks/results/family_reference.json      # CD only; DSPy rows taken from the reference
    python -m benchmarks family --merge A.json B.json --out C      # the runs of several results in one

Per task, optimizer and seed block (0-9 tuning, 10-29 held out) it reports the oracle (analytic expected) accuracy of
the returned program, its accuracy on the task's separate test split with a 95% CI over seeds, the runs whose
returned program is below the baseline (oracle and test), ConceptDistillation's valset optimism (reported minus true
gain), helpful-rule recall, harmful or tempting rules kept per (run, rule) pair, generic rules kept per run, student
and proposer/teacher calls (counted at the engines, caches off) and wall time, and checks issue 14's targets per
task and block. ``--tasks`` takes task names and the groups ``issue6`` (the first ten) and ``issue14`` (the six
kinds added for issue 14).
Each run is deterministic given its task and seed; runs are spread over ``--jobs`` processes. Results go to
``benchmarks/results/local/family.{json,md,csv}`` (untracked) unless ``--out`` names another path. ``--reference``
(repeatable) fills the rows of DSPy optimizers that were not run from earlier JSONs, when their task definitions
match (DSPy's optimizers do not depend on this library, so their rows stay valid while ConceptDistillation changes).
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
from ..harness.simulated.family_report import block_title, targets_table
from ..harness.simulated.tasks import TASK_GROUPS, TASKS, TASKS_BY_NAME
from .arguments import parse_list, parse_seeds


def parse_tasks(text: str | None) -> list[str]:
    """Comma-separated task names or groups (``issue6``, ``issue14``), in the order given, each task once."""
    if not text:
        return list(TASKS_BY_NAME)
    names = [n for item in text.split(",") if item.strip() for n in TASK_GROUPS.get(item.strip(), [item.strip()])]
    return list(dict.fromkeys(parse_list(",".join(names), list(TASKS_BY_NAME), "tasks")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", help="comma-separated task names or groups (issue6, issue14; default: all): "
                        f"{', '.join(TASKS_BY_NAME)}")
    parser.add_argument("--optimizers", help=f"comma-separated (default: all): {', '.join(OPTIMIZERS)}")
    parser.add_argument("--seeds", default="0-9", help="e.g. 0-9, 0,3,5 or 0-4,7 (default 0-9)")
    parser.add_argument("--cd-kwargs", default="{}", help="JSON of extra ConceptDistillation arguments")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--threads", type=int, default=4, help="num_threads given to each optimizer (default 4)")
    parser.add_argument("--out", type=Path, help=f"output path without suffix (default {shown(family.DEFAULT_OUT)})")
    parser.add_argument("--reference", type=Path, action="append",
                        help="earlier family JSON to take missing DSPy optimizer rows from (repeatable; the first "
                        "file holding a run wins)")
    parser.add_argument("--note", action="append", default=[], help="a note to add to the report (repeatable)")
    parser.add_argument("--render", type=Path, help="summarize the runs stored in an earlier JSON again (no runs)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="the runs of several earlier JSONs in one result, only those of --optimizers when given "
                        "(no runs; --out names it)")
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
        payload = family.rerender(args.render, f"python -m benchmarks family --render {shlex.quote(str(args.render))}",
                                  jobs=args.jobs, threads=args.threads)
        base = (args.out or args.render).with_suffix("")
    elif args.merge:
        if not args.out:
            raise SystemExit("--merge needs --out")
        chosen = parse_list(args.optimizers, list(OPTIMIZERS), "optimizers") if args.optimizers else None
        payload = family.merge(args.merge, args.command_line, optimizers=chosen, jobs=args.jobs, threads=args.threads)
        base = args.out.with_suffix("")
    else:
        payload = family.measure(
            parse_tasks(args.tasks), parse_list(args.optimizers, list(OPTIMIZERS), "optimizers"),
            parse_seeds(args.seeds), seeds_label=args.seeds, cd_kwargs=json.loads(args.cd_kwargs), jobs=args.jobs,
            threads=args.threads, reference=args.reference, command=args.command_line)
        base = args.out.with_suffix("") if args.out else family.DEFAULT_OUT
    payload["meta"]["notes"] = [*payload["meta"]["notes"], *(n for n in args.note if n not in payload["meta"]["notes"])]
    family.write(payload, base)
    for block, checks in payload["targets"].items():
        print(f"Targets, {block_title(block)}:")
        print("\n".join(targets_table(checks)) + "\n")
    print(f"\nwrote {base}.json, .md and .csv ({payload['meta']['wall_seconds']:.0f} s of runs)")
    return 0
