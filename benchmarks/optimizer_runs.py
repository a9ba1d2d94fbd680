"""How every optimizer is run in the simulated benchmarks (benchmarks/family.py, benchmarks/compare_optimizers.py):
one place for each optimizer's settings.

DSPy's optimizers keep the settings of the original comparison: COPRO breadth 4, depth 2; MIPROv2 ``auto="light"``
zero-shot; GEPA ``auto="light"``; SIMBA batch 8, 4 steps; InferRules 10 candidates, zero-shot. ConceptDistillation
runs with a preset and any extra keyword arguments (``cd_kwargs``).
"""

from __future__ import annotations

import contextlib
import io
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.teleprompt import COPRO, GEPA, SIMBA, InferRules, MIPROv2

from dspy_concept_distill import ConceptDistillation

NUM_THREADS = 4


@dataclass
class RunContext:
    """Everything one optimizer run gets: data, metric, the student LM, the helper LM that writes instructions (the
    blind proposer, or ConceptDistillation's teacher), the program, the seed and ConceptDistillation's kwargs."""

    program: dspy.Module
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    metric: Callable[..., Any]
    student_lm: dspy.LM
    helper_lm: dspy.LM
    seed: int
    num_threads: int = NUM_THREADS
    cd_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer at fixed settings. ``is_cd``: ConceptDistillation (gets the task's CD teacher)."""

    key: str
    label: str
    settings: str
    run: Callable[[RunContext], dspy.Module]
    is_cd: bool = False


def feedback_metric(metric: Callable[..., Any]) -> Callable[..., dspy.Prediction]:
    """GEPA's five-argument metric: ``metric`` as the score, with the expected answer as feedback."""

    def with_feedback(gold: dspy.Example, pred: dspy.Prediction, trace: Any = None, pred_name: str | None = None,
                      pred_trace: Any = None) -> dspy.Prediction:
        ok = metric(gold, pred)
        got = getattr(pred, "answer", None)
        feedback = f"Correct: the answer is {gold.answer}." if ok else f"Incorrect: expected {gold.answer}, got {got}."
        return dspy.Prediction(score=float(ok), feedback=feedback)

    return with_feedback


def run_copro(ctx: RunContext, *, breadth: int = 4, depth: int = 2) -> dspy.Module:
    optimizer = COPRO(prompt_model=ctx.helper_lm, metric=ctx.metric, breadth=breadth, depth=depth)
    return optimizer.compile(ctx.program, trainset=ctx.trainset,
                             eval_kwargs={"num_threads": ctx.num_threads, "display_progress": False})


def run_infer_rules(ctx: RunContext, *, num_candidates: int = 10) -> dspy.Module:
    optimizer = InferRules(num_candidates=num_candidates, num_rules=10, num_threads=ctx.num_threads,
                           teacher_settings={"lm": ctx.helper_lm}, metric=ctx.metric,
                           max_bootstrapped_demos=0, max_labeled_demos=0)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset)


def run_mipro(ctx: RunContext) -> dspy.Module:
    optimizer = MIPROv2(metric=ctx.metric, prompt_model=ctx.helper_lm, task_model=ctx.student_lm, auto="light",
                        max_bootstrapped_demos=0, max_labeled_demos=0, num_threads=ctx.num_threads, seed=ctx.seed)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset, requires_permission_to_run=False)


def run_gepa(ctx: RunContext) -> dspy.Module:
    optimizer = GEPA(metric=feedback_metric(ctx.metric), auto="light", reflection_lm=ctx.helper_lm,
                     num_threads=ctx.num_threads, seed=ctx.seed)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset)


def run_simba(ctx: RunContext) -> dspy.Module:
    optimizer = SIMBA(metric=ctx.metric, bsize=8, max_steps=4, num_candidates=6, max_demos=4,
                      prompt_model=ctx.helper_lm, num_threads=ctx.num_threads)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, seed=ctx.seed)


def run_cd(ctx: RunContext, *, auto: str = "light") -> dspy.Module:
    kwargs = {"auto": auto, "seed": ctx.seed, "num_threads": ctx.num_threads, **ctx.cd_kwargs}
    optimizer = ConceptDistillation(metric=ctx.metric, teacher_lm=ctx.helper_lm, **kwargs)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset)


def _cd(auto: str) -> OptimizerSpec:
    return OptimizerSpec(f"cd-{auto}", f"ConceptDistillation {auto}", f"auto='{auto}' (+ --cd-kwargs)",
                         lambda ctx: run_cd(ctx, auto=auto), is_cd=True)


OPTIMIZERS: dict[str, OptimizerSpec] = {spec.key: spec for spec in [
    _cd("light"), _cd("medium"), _cd("heavy"),
    OptimizerSpec("copro", "COPRO", "breadth=4, depth=2, init_temperature=1.4 (default); scores on the trainset",
                  run_copro),
    OptimizerSpec("miprov2", "MIPROv2 light", "auto='light', max_bootstrapped_demos=0, max_labeled_demos=0 "
                  "(0-shot), valset=valset", run_mipro),
    OptimizerSpec("gepa", "GEPA light", "auto='light', reflection_minibatch_size=3 (default), use_merge=True "
                  "(default), valset=valset", run_gepa),
    OptimizerSpec("simba", "SIMBA", "bsize=8, max_steps=4, num_candidates=6 (default), max_demos=4 (default); "
                  "trainset only", run_simba),
    OptimizerSpec("infer-rules", "InferRules", "num_candidates=10 (default), num_rules=10, max_bootstrapped_demos=0, "
                  "max_labeled_demos=0, valset=valset", run_infer_rules),
]}
DSPY_OPTIMIZERS = [key for key, spec in OPTIMIZERS.items() if not spec.is_cd]


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Keep the optimizers' own prints, progress bars and DSPy's log lines (DSPy logs to the current stderr) out
    of the terminal."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


@dataclass
class Outcome:
    """What one optimizer run returned: the program (None on failure), the error, wall time and its output."""

    program: dspy.Module | None
    error: str | None
    wall_seconds: float
    output: str
    traceback: str | None = None
    cpu_seconds: float = 0.0  # CPU time of this process (all its threads) during the run


def run_optimizer(spec: OptimizerSpec, ctx: RunContext) -> Outcome:
    """Run ``spec`` on ``ctx`` with the student as the default LM; a failure is recorded, not raised."""
    start, cpu = time.perf_counter(), time.process_time()
    program, error, trace = None, None, None
    with captured_output() as output:
        try:
            with dspy.context(lm=ctx.student_lm):
                program = spec.run(ctx)
        except Exception as exc:  # one optimizer failing must not end the benchmark
            error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
    return Outcome(program, error, round(time.perf_counter() - start, 3), output.getvalue(), trace,
                   round(time.process_time() - cpu, 3))


def instructions_of(program: dspy.Module) -> str:
    """All instructions of a program's predictors, joined."""
    return "\n".join(predictor.signature.instructions for _, predictor in program.named_predictors())


def score_with(program: dspy.Module, lm: dspy.LM, devset: list[dspy.Example], metric: Callable[..., Any],
               num_threads: int = NUM_THREADS) -> float:
    """Mean ``metric`` (0-1) of ``program`` on ``devset`` with ``lm`` set on every predictor for the duration (set,
    not deepcopied: deepcopy loses attributes it cannot copy), so no optimizer's counters move."""
    predictors = [predictor for _, predictor in program.named_predictors()]
    saved = [predictor.lm for predictor in predictors]
    try:
        for predictor in predictors:
            predictor.lm = lm
        with captured_output():
            result = dspy.Evaluate(devset=devset, metric=metric, num_threads=num_threads,
                                   display_progress=False)(program)
    finally:
        for predictor, old in zip(predictors, saved, strict=True):
            predictor.lm = old
    return result.score / 100
