"""Speed of the optimizer itself, with scripted LMs (NOT real models) that answer at once or after a set latency.

    python -m benchmarks speed                     # every measurement, results to benchmarks/results/local/
    python -m benchmarks speed --skip-parallel --profile /tmp/overhead.prof     # the overhead case under cProfile
    python -m benchmarks speed --out benchmarks/results/speed                   # the committed results

a. Overhead per LM call (instant LM, ``--train`` training examples, one thread): a whole ConceptDistillation compile
   (light preset) whose teacher proposes no rule, so the run is phase 1 (the trainset), the valset baseline and the
   teacher's empty replies; against plain ``dspy.Evaluate`` of the same program on the same train + val examples
   in the same process. For both: (wall time - time inside the LM engines) / requests. The engine time (the
   scripted LMs reading prompts and writing replies) is taken out; what remains is DSPy's own work (adapters,
   parsing, LM bookkeeping) plus, for the compile, the optimizer's. ``extra`` is the compile's figure minus
   ``dspy.Evaluate``'s: the optimizer's own cost per call.
b. Parallel efficiency (``--latency`` seconds per student request, 40 train / 40 val examples, auto="medium",
   screen_size=0) at each of ``--threads``: efficiency = (requests x latency / threads) / wall time, i.e. the share
   of the thread pool's time spent waiting on the LM; 1.0 means no idle thread and no overhead. The teacher answers
   at once unless ``--teacher-latency`` is given (its requests then count in the numerator with their latency).
   Each request is also logged with its phase and start/end times, to show where threads sit idle. With
   ``--structure-latency`` (default 0.25 s; 0 turns it off) each multi-threaded run is repeated at that latency:
   wall = waves x latency + fixed splits its wall time into sequential LM round trips (the critical path, set by
   the optimizer's phase barriers and racing) and time that does not scale with latency (CPU work not hidden
   behind waiting, late wake-ups on a busy machine). ``--latency-sigma`` draws each latency from a lognormal with
   that mean instead (remote models answer in varying time).
c. Parallel efficiency across the task family (``--family-threads``, default 16): every task of the family
   (benchmarks/harness/simulated/tasks.py) compiled with a latency-simulating student, fixed and lognormal
   (``--family-sigmas``), with efficiency and net efficiency per run (see speed_family.py beside it).
   ``--skip-family`` leaves it out.
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
