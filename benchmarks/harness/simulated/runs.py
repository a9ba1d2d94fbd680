"""One optimizer run in the simulated benchmarks: the optimizer's own output kept out of the terminal, a failure
recorded rather than raised, and the returned program scored without moving any optimizer's counters."""

from __future__ import annotations

import contextlib
import io
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import dspy

from ..optimizers import NUM_THREADS, RunContext


class Runnable(Protocol):
    def run(self, ctx: RunContext) -> dspy.Module: ...


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


def run_optimizer(spec: Runnable, ctx: RunContext) -> Outcome:
    """Run ``spec`` (a registry ``Optimizer`` or anything with ``run(ctx)``) on ``ctx`` with the student as the
    default LM; a failure is recorded, not raised."""
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
