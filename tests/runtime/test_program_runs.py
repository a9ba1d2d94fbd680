"""Budgets stated in program runs (the presets, ``max_metric_calls``) are converted to LM calls with the calls per run
measured on the first trainset pass (issue 15, item 2): a program making five LM calls per run races the same
candidates, and makes the same program runs, as a one-call program; ``max_student_calls`` stays a hard limit in LM
calls; the limits and the cost forecast are frozen records."""

from __future__ import annotations

import dataclasses
import logging
import math

import dspy
import pytest

from dspy_concept_distill import BudgetTooSmallError, ConceptDistillation
from dspy_concept_distill.records import CallBounds, CostForecast, Limits
from dspy_concept_distill.testing import SimulatedWorld

SIGNATURE = "question -> answer: float"


class OneCall(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.ChainOfThought(SIGNATURE)

    def forward(self, question):
        return self.step(question=question)


class FiveCalls(OneCall):
    """An agent loop: the same predictor five times per run (the scripted student answers each pass alike)."""

    def forward(self, question):
        for attempt in range(5):
            prediction = self.step(question=f"{question} (pass {attempt + 1})")
        return prediction


def compile_with(program, **params):
    world = SimulatedWorld()
    train, val = world.split(20, 20)
    student = world.student_lm()
    dspy.configure(lm=student)
    params.setdefault("num_threads", 1)
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), **params)
    return optimizer.compile(program, trainset=train, valset=val).distillation, student


def fates(result) -> list[tuple[str, str, int]]:
    return [(r.text, r.status, r.evaluated_on) for r in result.rules]


def test_the_default_preset_races_the_same_candidates_for_a_five_call_program():
    one, _ = compile_with(OneCall())
    five, five_lm = compile_with(FiveCalls())
    assert five.accepted_rules and fates(five) == fates(one)
    assert five.stopped is None and one.stopped is None
    assert five.student_calls == five_lm.engine.calls == 5 * one.student_calls
    runs = math.ceil((20 + 5 * 20) / 0.95)  # auto="light": the trainset once and the valset five times, reserve on top
    assert one.budgets["program_runs"] == five.budgets["program_runs"] == runs
    assert one.budgets["calls_per_run"] == 1 and five.budgets["calls_per_run"] == 5
    assert one.budgets["student_calls"] == runs and five.budgets["student_calls"] == 5 * runs


@pytest.mark.parametrize("threads", [1, 4])
def test_max_metric_calls_counts_program_runs_whatever_the_calls_per_run(threads):
    one, _ = compile_with(OneCall(), max_metric_calls=60, num_threads=threads)
    five, five_lm = compile_with(FiveCalls(), max_metric_calls=60, num_threads=threads)
    assert five.budgets["student_calls"] == 300 and five_lm.engine.calls <= 300
    assert five.student_calls == 5 * one.student_calls  # the same program runs
    assert [(t, s) for t, s, _ in fates(five)] == [(t, s) for t, s, _ in fates(one)]
    assert "budget" in five.stopped and "budget" in one.stopped


def test_max_student_calls_stays_a_hard_limit_in_lm_calls():
    five, five_lm = compile_with(FiveCalls(), max_student_calls=350)
    assert five.budgets["student_calls"] == 350 and five.budgets["program_runs"] is None
    assert five_lm.engine.calls == five.student_calls <= 350


def test_a_run_budget_too_small_for_the_trainset_and_baseline_fails_before_any_call():
    world = SimulatedWorld()
    train, val = world.split(20, 20)
    student = world.student_lm()
    dspy.configure(lm=student)
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), max_metric_calls=30)
    with pytest.raises(BudgetTooSmallError, match=r"30 program runs.*trainset \(20\).*valset baseline \(20\)"):
        optimizer.compile(FiveCalls(), trainset=train, valset=val)
    assert student.engine.calls == 0


def test_the_projection_says_the_budget_is_in_program_runs_and_how_it_was_converted(caplog):
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        compile_with(FiveCalls())
    before = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("before the run"))
    after = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("after the trainset run"))
    assert "127 program runs" in before and "per run" in before  # 20 + 5 x 20, with the 5% reserve on top
    assert "5.0 LM calls per program run" in after and "635 LM calls" in after


def test_limits_and_the_forecast_are_frozen_records():
    limits = Limits(student_calls=None, teacher_calls=10, program_runs=120)
    converted = limits.converted(2.5)
    assert converted.student_calls == 300 and converted.calls_per_run == 2.5 and limits.student_calls is None
    assert limits.converted(1.0).student_calls == 120
    grown = converted.with_more_runs(40)
    assert grown.program_runs == 160 and grown.student_calls == 300 + math.ceil(40 * 2.5)
    given = Limits(student_calls=50, teacher_calls=10)
    assert given.converted(3.0) == dataclasses.replace(given, calls_per_run=3.0)  # LM calls stay as given
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.student_calls = 5  # type: ignore[misc]
    forecast = CostForecast(CallBounds(40, 120, 10), 0.1, 0.5)
    assert forecast.to_dict() == {"low": 0.1, "high": 0.5}
    assert limits.to_dict() == {"student_calls": None, "teacher_calls": 10, "tokens": None, "cost_usd": None,
                                "program_runs": 120, "calls_per_run": None}
