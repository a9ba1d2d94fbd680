"""How to run it:

    python -m benchmarks speed                     # every measurement, results to benchmarks/results/local/
    python -m benchmarks speed --skip-parallel --profile /tmp/overhead.prof     # the overhead case under cProfile
    python -m benchmarks speed --out benchmarks/results/speed                   # the committed results

``--train`` and ``--val`` size case a.; ``--latency``, ``--threads``, ``--teacher-latency``, ``--structure-latency``
(default 0.25 s; 0 turns it off) and ``--latency-sigma`` set case b.; ``--family-threads`` (default 16) and
``--family-sigmas`` set case c., which ``--skip-family`` leaves out.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: offline price table
os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the runs

import argparse
from pathlib import Path

from ..harness.paths import shown
from ..harness.simulated import speed
from ..harness.simulated.tasks import TASKS_BY_NAME
from .arguments import parse_list, parse_seeds

# the help: what is measured (said once, in the harness module), then how to run it
__doc__ = f"{speed.__doc__}\n{__doc__}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=int, default=40, help="training examples for the overhead case (a compile "
                        "runs the student on a sample of at least 40 of them)")
    parser.add_argument("--val", type=int, default=5000, help="validation examples for the overhead case (its "
                        "valset baseline is where a compile whose teacher proposes nothing makes thousands of calls)")
    parser.add_argument("--overhead-threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="overhead runs of each kind; the best is reported")
    parser.add_argument("--threads", default="1,4,16,32", help="thread counts for the parallel case")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per student request (parallel case)")
    parser.add_argument("--structure-latency", type=float, default=0.25,
                        help="run the multi-threaded cases again at this latency to find their critical path (0: no)")
    parser.add_argument("--teacher-latency", type=float, default=0.0, help="seconds per teacher request")
    parser.add_argument("--parallel-repeats", type=int, default=3,
                        help="runs of each multi-threaded case; the shortest wall time is reported (all in the JSON)")
    parser.add_argument("--parallel-train", type=int, default=40)
    parser.add_argument("--parallel-val", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-parallel", action="store_true")
    parser.add_argument("--latency-sigma", type=float, default=0.0,
                        help="parallel case: lognormal log-sd of the student's latency around --latency (0: fixed)")
    parser.add_argument("--skip-family", action="store_true")
    parser.add_argument("--family-tasks", help="family case: comma-separated task names (default all): "
                        + ", ".join(TASKS_BY_NAME))
    parser.add_argument("--family-presets", default="cd-light,cd-medium")
    parser.add_argument("--family-seeds", default="0-1")
    parser.add_argument("--family-threads", type=int, default=16)
    parser.add_argument("--family-sigmas", default="0,0.5", help="lognormal log-sds of the student's latency")
    parser.add_argument("--profile", help="write cProfile stats of the overhead compile to this file")
    parser.add_argument("--out", type=Path, default=speed.DEFAULT_OUT,
                        help=f"output path without suffix (.json/.md; default {shown(speed.DEFAULT_OUT)})")


def run(args: argparse.Namespace) -> int:
    overhead = None if args.skip_overhead else {
        "n_train": args.train, "n_val": args.val, "threads": args.overhead_threads, "seed": args.seed,
        "repeats": args.repeats, "profile": args.profile}
    parallel = None if args.skip_parallel else {
        "threads": [int(t) for t in args.threads.split(",")], "latency": args.latency,
        "teacher_latency": args.teacher_latency, "repeats": args.parallel_repeats, "train": args.parallel_train,
        "val": args.parallel_val, "seed": args.seed, "sigma": args.latency_sigma,
        "structure_latency": args.structure_latency}
    family = None if args.skip_family else {
        "tasks": parse_list(args.family_tasks, list(TASKS_BY_NAME), "tasks"),
        "presets": args.family_presets.split(","), "seeds": parse_seeds(args.family_seeds),
        "threads": args.family_threads, "latency": args.latency,
        "sigmas": [float(x) for x in args.family_sigmas.split(",")]}
    report = speed.measure(command=args.command_line, overhead=overhead, parallel=parallel, family=family)
    speed.write(report, args.out)
    print(speed.markdown(report))
    return 0
