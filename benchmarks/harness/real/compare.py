"""``python -m benchmarks run --optimizers ...``: several optimizers on one real task, scored on a held-out test split.

For each optimizer: compile on the trainset (and valset) with the student as DSPy's LM and the teacher as its
instruction writer; count the student's and the teacher's calls and tokens at the LM (DSPy's caches off, so
every counted call is a request the model answered) while it compiles; then score the returned program on the
valset and on the test split, which no optimizer ever sees. Test accuracy comes with a 95% confidence interval
over test examples (Wilson score interval for a 0/1 metric, else a percentile bootstrap). Scoring calls are not
counted as compile cost; a program already scored (same instructions and demos) is not scored again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from ..metering import CallMeter, Usage, disable_caches
from ..optimizers import Plan, RunContext, compile_with, plan
from .setup import Setup

logger = logging.getLogger(__name__)
Z95 = 1.959963984540054


# -- confidence intervals -------------------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n <= 0:
        raise ValueError("an interval needs at least one observation")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def bootstrap_interval(scores: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean."""
    if not scores:
        raise ValueError("an interval needs at least one observation")
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choice(scores) for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def accuracy_ci(scores: Sequence[float]) -> tuple[float, float, float, str]:
    """Mean, 95% interval and the method's name: Wilson for 0/1 scores, bootstrap otherwise."""
    mean = sum(scores) / len(scores)
    if all(s in (0, 1) for s in scores):
        return (mean, *wilson_interval(sum(scores), len(scores)), "wilson")
    return (mean, *bootstrap_interval(list(scores)), "bootstrap")


# -- scoring ----------------------------------------------------------------------------------------------------------
def score_examples(program: dspy.Module, examples: Sequence[dspy.Example], metric: Callable[..., Any],
                   num_threads: int) -> list[float]:
    """The metric of ``program`` on each example (an exception or a failed parse scores 0). Each example runs once
    (no straggler re-submission), in threads that carry the caller's DSPy context."""

    def one(example: dspy.Example) -> float:
        try:
            value = metric(example, program(**example.inputs()))
        except Exception as exc:  # a parse failure or LM error is a wrong answer here, not a crash
            logger.debug("scoring failed on one example: %s", exc)
            return 0.0
        return float(getattr(value, "score", value))

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        futures = [pool.submit(copy_context().run, one, ex) for ex in examples]
        return [f.result() for f in futures]


class ScoreCache:
    """Scores per (program state, split): a program with the same instructions and demos is scored once."""

    def __init__(self, metric: Callable[..., Any], num_threads: int) -> None:
        self.metric, self.num_threads = metric, num_threads
        self._cache: dict[tuple[str, str], list[float]] = {}

    def scores(self, program: dspy.Module, split: str, examples: Sequence[dspy.Example]) -> list[float]:
        key = (program_key(program), split)
        if key not in self._cache:
            self._cache[key] = score_examples(program, examples, self.metric, self.num_threads)
        return self._cache[key]


def program_key(program: dspy.Module) -> str:
    """What decides a program's answers here: each predictor's instructions, output-field prefixes and demos."""
    parts = []
    for name, predictor in program.named_predictors():
        prefixes = [f.json_schema_extra.get("prefix", "") for f in predictor.signature.output_fields.values()]
        demos = [dict(d) if hasattr(d, "items") else d for d in predictor.demos]
        parts.append(repr((name, predictor.signature.instructions, prefixes, demos)))
    return "\n".join(parts)


def instructions_of(program: dspy.Module) -> str:
    return " | ".join(p.signature.instructions for _, p in program.named_predictors())


# -- one optimizer ----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One optimizer's line in the comparison."""

    task: str
    optimizer: str
    settings: str
    status: str = "ok"
    error: str | None = None
    test_score: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str | None = None
    n_test: int = 0
    val_score: float | None = None
    budget: int | None = None
    planned_student_calls: int | None = None
    student_calls: int = 0
    teacher_calls: int = 0
    student_input_tokens: int = 0
    student_output_tokens: int = 0
    teacher_input_tokens: int = 0
    teacher_output_tokens: int = 0
    ledger_student_calls: int | None = None  # ConceptDistillation's own ledger, for the cross-check
    ledger_teacher_calls: int | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    instructions: str = ""


@contextlib.contextmanager
def quiet(log_path: Path | None) -> Iterator[None]:
    """Optimizers' own prints and progress bars go to ``log_path`` (or nowhere), not the terminal."""
    sink = open(log_path, "w", encoding="utf-8") if log_path else open("/dev/null", "w")  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        sink.close()


def run_one(key: str, setup: Setup, meter: CallMeter, scores: ScoreCache, *, budget: int | None, seed: int,
            num_threads: int, log_path: Path | None = None) -> Row:
    """Compile with optimizer ``key``, count its calls, score the result on the valset and the test split."""
    program = setup.program()
    chosen: Plan = plan(key, budget=budget, n_train=len(setup.trainset), n_val=len(setup.valset),
                        predictors=len(program.named_predictors()))
    row = Row(setup.task, key, chosen.settings, budget=budget, planned_student_calls=chosen.planned_calls,
              n_test=len(setup.testset))
    inputs = RunContext(program, list(setup.trainset), list(setup.valset), setup.metric, setup.student, setup.teacher,
                        seed, num_threads)
    before, wall, cpu = meter.snapshot(), time.perf_counter(), time.process_time()
    optimized, result = None, None
    try:
        with meter.tracking(), quiet(log_path):
            optimized, result = compile_with(chosen, inputs)
    except Exception as exc:  # one optimizer failing must not end the comparison
        row.status, row.error = "error", f"{type(exc).__name__}: {str(exc)[:300]}"
        logger.warning("%s failed: %s", key, row.error)
    row.wall_seconds = round(time.perf_counter() - wall, 1)
    row.cpu_seconds = round(time.process_time() - cpu, 1)
    _fill_usage(row, meter.snapshot(), before)
    if result is not None:
        row.ledger_student_calls, row.ledger_teacher_calls = result.student_calls, result.teacher_calls
    if optimized is not None:
        _score(row, optimized, setup, scores)
    return row


def _fill_usage(row: Row, after: dict[str, Usage], before: dict[str, Usage]) -> None:
    student = after.get("student", Usage()) - before.get("student", Usage())
    teacher = after.get("teacher", Usage()) - before.get("teacher", Usage())
    row.student_calls, row.teacher_calls = student.calls, teacher.calls
    row.student_input_tokens, row.student_output_tokens = student.input_tokens, student.output_tokens
    row.teacher_input_tokens, row.teacher_output_tokens = teacher.input_tokens, teacher.output_tokens


def _score(row: Row, optimized: dspy.Module, setup: Setup, scores: ScoreCache) -> None:
    row.instructions = instructions_of(optimized)
    if setup.valset:
        val = scores.scores(optimized, "val", setup.valset)
        row.val_score = sum(val) / len(val)
    if setup.testset:
        test = scores.scores(optimized, "test", setup.testset)
        row.test_score, row.ci_low, row.ci_high, row.ci_method = accuracy_ci(test)


# -- the comparison -----------------------------------------------------------------------------------------------
def compare(setup: Setup, keys: Sequence[str], *, budget: int | None, seed: int, num_threads: int,
            log_dir: Path | None = None, echo: Callable[[str], None] = print) -> list[Row]:
    """Every optimizer in ``keys`` on ``setup``, one after another, with DSPy's caches off."""
    if not setup.testset:
        raise ValueError("the comparison needs a test split: pass --n-test N (N > 0)")
    for key in keys:  # fail on a bad name before any LM call
        plan(key, budget=budget, n_train=len(setup.trainset), n_val=len(setup.valset))
    disable_caches()
    meter = CallMeter()
    meter.attach("student", setup.student)
    meter.attach("teacher", setup.teacher)
    scores = ScoreCache(setup.metric, num_threads)
    rows = []
    with dspy.context(lm=setup.student, adapter=setup.adapter):
        for key in keys:
            echo(f"[{setup.task}] {key}: compiling ...")
            log_path = log_dir / f"{setup.task}_{key}.log" if log_dir else None
            row = run_one(key, setup, meter, scores, budget=budget, seed=seed, num_threads=num_threads,
                          log_path=log_path)
            rows.append(row)
            echo(f"[{setup.task}] {key}: {describe(row)}")
    return rows


def describe(row: Row) -> str:
    if row.status != "ok":
        return f"failed after {row.student_calls} student calls ({row.error})"
    test = "n/a" if row.test_score is None else f"{row.test_score:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"
    val = "n/a" if row.val_score is None else f"{row.val_score:.3f}"
    return (f"test {test}, valset {val}, {row.student_calls} student / {row.teacher_calls} teacher calls, "
            f"{row.wall_seconds:.0f} s wall, {row.cpu_seconds:.0f} s CPU")
