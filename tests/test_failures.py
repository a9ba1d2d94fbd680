"""Failures speak (issue 15, item 4). A compile that cannot produce any evidence raises an exception that names the
cause: the student or teacher LM unreachable on its first requests (a bad key, a closed port), a metric that fails on
every valset example, a budget used up before any candidate was raced. A run that ends early with partial evidence
returns it with ONE warning line, visible at default logging settings, that says what was learned and why it
stopped. ``on_failure="return"`` gives the unchanged program instead of the exception."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import dspy
import pytest
from dspy.lm15 import AuthError

from dspy_concept_distill import (
    BudgetTooSmallError,
    ConceptDistillation,
    DistillationError,
    DistillationResult,
    LMUnavailableError,
    MetricFailedError,
)
from dspy_concept_distill.testing import ScriptedTeacherEngine, SimulatedStudentEngine, SimulatedWorld
from dspy_concept_distill.testing.faults import FaultyEngine
from tests.helpers import REPO

SIGNATURE = "question -> answer: float"


class Refusing:
    """An engine whose provider refuses the key on every request."""

    def __init__(self) -> None:
        self.received = 0

    def complete(self, request):
        self.received += 1
        raise AuthError("Incorrect API key provided: sk-wrong", status=401)

    def close(self) -> None:
        pass


class Case:
    def __init__(self, *, student=None, teacher=None, n: int = 20) -> None:
        self.world = SimulatedWorld()
        self.train, self.val = self.world.split(n, n)
        self.student_engine = student or FaultyEngine(SimulatedStudentEngine(self.world))
        self.teacher_engine = teacher or FaultyEngine(ScriptedTeacherEngine(self.world))
        self.student = dspy.LM("simulated/student", engine=self.student_engine)
        self.teacher = dspy.LM("simulated/teacher", engine=self.teacher_engine)
        dspy.configure(lm=self.student)

    def compile(self, metric=None, **params):
        optimizer = ConceptDistillation(metric=metric or self.world.metric, teacher_lm=self.teacher, **params)
        return optimizer.compile(dspy.ChainOfThought(SIGNATURE), trainset=self.train, valset=self.val)


def our_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("dspy_concept_distill")]


@pytest.mark.parametrize("threads", [1, 4])
def test_a_refused_student_key_raises_at_once_naming_the_cause(threads):
    case = Case(student=Refusing())
    with pytest.raises(LMUnavailableError, match=r"student LM.*Incorrect API key") as caught:
        case.compile(num_threads=threads)
    assert caught.value.role == "student"
    assert case.student_engine.received <= threads  # stopped at once, not after every queued run failed
    assert case.teacher_engine.received == 0
    result = caught.value.result
    assert isinstance(result, DistillationResult) and result.student_calls == case.student_engine.received


def test_a_refused_teacher_key_raises_naming_the_teacher():
    case = Case(teacher=Refusing())
    with pytest.raises(LMUnavailableError, match=r"teacher LM.*Incorrect API key") as caught:
        case.compile(num_threads=2)
    assert caught.value.role == "teacher" and isinstance(caught.value, DistillationError)


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_a_closed_port_raises_naming_the_connection(engine):
    """A real connection to a closed local port (127.0.0.1:9): no network needed."""
    case = Case()
    case.student = dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-test", num_retries=0,
                           engine=engine)
    dspy.configure(lm=case.student)
    with pytest.raises(LMUnavailableError, match=r"student LM.*([Cc]onnect|[Cc]onnection)"):
        case.compile(num_threads=1)
    assert case.teacher_engine.received == 0


def test_a_metric_that_fails_on_every_valset_example_is_named_not_the_rules():
    case = Case()
    val_questions = {ex.question for ex in case.val}

    def metric(example, prediction, trace=None):
        if example.question in val_questions:
            raise KeyError("score_label")  # e.g. a label the valset examples lack
        return case.world.metric(example, prediction)

    with pytest.raises(MetricFailedError, match=r"metric failed on every one of the 20 valset examples.*KeyError"):
        case.compile(metric=metric)


def test_a_budget_used_up_before_any_candidate_raced_raises():
    case = Case()
    with pytest.raises(BudgetTooSmallError, match=r"student call budget of 40 .*before any candidate rule"):
        case.compile(max_student_calls=40, num_threads=1)  # the trainset and the valset baseline take it all


def test_a_teacher_budget_of_nothing_raises():
    case = Case()
    with pytest.raises(BudgetTooSmallError, match=r"teacher call budget of 0"):
        case.compile(max_teacher_calls=0)
    assert case.teacher_engine.received == 0


def test_on_failure_return_gives_the_unchanged_program_and_one_warning(caplog):
    case = Case(student=Refusing())
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        optimized = case.compile(num_threads=1, on_failure="return")
    untouched = dspy.ChainOfThought(SIGNATURE).predict.signature.instructions
    assert optimized.predict.signature.instructions == untouched
    assert "Incorrect API key" in optimized.distillation.stopped and not optimized.distillation.accepted_rules
    warned = our_warnings(caplog)
    assert len(warned) == 1 and "student LM" in warned[0] and "unchanged" in warned[0]


def test_partial_evidence_is_returned_with_one_warning_saying_what_was_learned_and_why(caplog):
    case = Case()
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        optimized = case.compile(max_student_calls=75)
    result = optimized.distillation
    assert "budget" in result.stopped and result.accepted_rules
    warned = our_warnings(caplog)
    assert len(warned) == 1
    line = warned[0]
    assert "\n" not in line and "stopped early" in line and "student call budget of 75" in line
    assert f"kept {len(result.ruleset)} verified rule" in line and "not verified" in line


def test_the_warning_and_the_error_are_visible_in_a_plain_script():
    """No logging configuration at all, as in ``python script.py``: the one warning line reaches stderr, and a
    failure is an exception with its cause, not a quiet return."""
    script = textwrap.dedent(f"""
        import dspy
        from dspy_concept_distill import ConceptDistillation
        from dspy_concept_distill.testing import SimulatedWorld
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)  # the runs cost what they cost
        world = SimulatedWorld()
        train, val = world.split(20, 20)
        dspy.configure(lm=world.student_lm())
        optimizer = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), max_student_calls=75)
        optimizer.compile(dspy.ChainOfThought({SIGNATURE!r}), trainset=train, valset=val)
        ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), max_student_calls=40).compile(
            dspy.ChainOfThought({SIGNATURE!r}), trainset=train, valset=val)
    """)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HOME": "/tmp"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd="/tmp")
    assert done.returncode == 1
    stopped = [line for line in done.stderr.splitlines() if "stopped early" in line and "WARNING" in line]
    assert len(stopped) == 1 and "student call budget of 75" in stopped[0]  # INFO lines say more; one warning
    assert "BudgetTooSmallError" in done.stderr and "before any candidate rule" in done.stderr
