"""The two jobs of ``python -m benchmarks run``: the main job (Concept Distillation end to end on a task, then the
candidate rules shipped with it raced through ``optimizer.verify()``) and the comparison of optimizers on held-out
test data (``--optimizers``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dspy

from dspy_concept_distill import ConceptDistillation, Rule, RuleSet

from ..paths import LOCAL_RESULTS, shown
from ..provenance import metadata, revision
from .compare import accuracy_ci, compare, score_examples
from .report import write_all
from .setup import Setup

DEFAULT_OUT = LOCAL_RESULTS / "latest"  # the main job's rules, reports and program
COMPARISON_OUT = LOCAL_RESULTS  # the comparison's real_<task>.csv/.md/.png
LOG_DIR = LOCAL_RESULTS / "logs"  # each optimizer's own output in a comparison

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


def run_comparison(args: argparse.Namespace, setup: Setup, command: str, started: float) -> int:
    """Every optimizer of --optimizers on the task; real_<task>.csv/.md/.png under --out (default
    benchmarks/results/local/)."""
    out = Path(args.out) if args.out else COMPARISON_OUT
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
    print(f"\nfinished in {time.monotonic() - started:.0f} s; written: {', '.join(shown(p) for p in paths)}")
    return 0 if any(r.status == "ok" for r in rows) else 1


def _log_dir(args: argparse.Namespace) -> Path:
    folder = Path(args.log_dir) if args.log_dir else LOG_DIR
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
    out = Path(args.out) if args.out else DEFAULT_OUT
    write_outputs(out, optimized, checked, best)
    print(f"\nfinished in {time.monotonic() - started:.0f} s ({time.process_time():.0f} s CPU); rules, reports and "
          f"program written to {shown(out)}/")
    return 0


def _print_test_scores(program: dspy.Module, best: dspy.Module, setup: Setup, threads: int) -> None:
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
