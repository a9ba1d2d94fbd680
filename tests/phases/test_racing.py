"""Parallel racing: with threads to spare, work ahead runs what the selection policy is predicted to ask for next
(several candidates at once), yet every decision is the one a 1-thread run takes, and work ahead never spends more
than the required-work account's reserve, so the student budget always has room for the work decisions need."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from concurrent.futures import Future

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.phases import racing
from dspy_concept_distill.phases.statistics import SelectionSettings
from dspy_concept_distill.records import Outcome
from dspy_concept_distill.rules import Rule, RuleSet
from dspy_concept_distill.runtime.account import RequiredAccount
from dspy_concept_distill.settings import PRESETS
from dspy_concept_distill.testing import ScriptedTeacherEngine, SimulatedStudentEngine, SimulatedTask
from dspy_concept_distill.testing.scripted import Prompt


class SlowStudent(SimulatedStudentEngine):
    """The simulated world's scripted student (not a real model), answering after ``latency`` seconds; it records
    the most distinct prompts (program variants) it was serving at one moment."""

    def __init__(self, world, latency: float) -> None:
        super().__init__(world)
        self.latency = latency
        self.active: Counter[str] = Counter()
        self.most_variants = 0
        self._active_lock = threading.Lock()

    def complete(self, request):
        variant = Prompt.of(request).system
        with self._active_lock:
            self.active[variant] += 1
            self.most_variants = max(self.most_variants, len(self.active))
        try:
            time.sleep(self.latency)
            return super().complete(request)
        finally:
            with self._active_lock:
                self.active[variant] -= 1
                if not self.active[variant]:
                    del self.active[variant]


def _compile(task: SimulatedTask, threads: int, **kwargs):
    engine = SlowStudent(task.world, latency=0.004)
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=task.world.teacher_lm(),
                                    **{"auto": "medium", **kwargs}, screen_size=0, num_threads=threads, seed=0)
    with dspy.context(lm=dspy.LM("simulated/student", engine=engine, cache=False)):
        result = optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=task.trainset,
                                   valset=task.valset).distillation
    decisions = [(r.text, r.status, r.reason, r.evaluated_on, round(r.gain or 0.0, 9)) for r in result.rules]
    return result, decisions, engine


@pytest.fixture(scope="module")
def noisy_task() -> SimulatedTask:
    return SimulatedTask.create(30, 30, seed=3, flip_rate=0.1)


@pytest.fixture(scope="module")
def one_thread(noisy_task):
    return _compile(noisy_task, 1)


def test_many_threads_race_several_candidates_at_once_and_decide_as_one_thread_does(noisy_task, one_thread):
    result_1, decisions_1, engine_1 = one_thread
    result_16, decisions_16, engine_16 = _compile(noisy_task, 16)
    assert result_16.student_calls == engine_16.calls  # work raced ahead and still in flight at the end is booked
    assert any(status == "accepted" for _, status, *_ in decisions_1)
    assert any(status == "rejected" for _, status, *_ in decisions_1)
    assert decisions_16 == decisions_1  # every rule: same status, reason, examples seen and gain
    assert result_16.final_score == result_1.final_score
    assert engine_1.most_variants == 1
    assert engine_16.most_variants >= 3  # several candidates (program variants) served at one moment


def test_work_ahead_never_takes_the_budget_the_decisions_need(noisy_task, one_thread):
    result_1, _, _ = one_thread
    limit = result_1.student_calls - 20  # a binding budget: the decisions run out of it
    result_b1, decisions_1, engine_1 = _compile(noisy_task, 1, max_student_calls=limit)
    _, decisions_16, engine_16 = _compile(noisy_task, 16, max_student_calls=limit)
    assert result_b1.stopped and "budget" in result_b1.stopped
    assert engine_1.calls <= limit and engine_16.calls <= limit  # hard, at any thread count
    assert engine_16.calls > engine_1.calls  # work ahead was thrown away at 16 threads ...
    assert decisions_16 == decisions_1  # ... yet the decisions are the 1-thread run's


class Recording(SlowStudent):
    """SlowStudent that also logs (question, start, end) per request."""

    def __init__(self, world, latency: float) -> None:
        super().__init__(world, latency)
        self.log: list[tuple[str, float, float]] = []

    def complete(self, request):
        start = time.perf_counter()
        try:
            return super().complete(request)
        finally:
            with self._active_lock:
                self.log.append((Prompt.of(request).user, start, time.perf_counter()))


def test_the_valset_baseline_runs_beside_the_trainset_at_many_threads():
    task = SimulatedTask.create(24, 24, seed=1)
    engine = Recording(task.world, latency=0.01)
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=task.world.teacher_lm(), auto="light",
                                    num_threads=8, seed=0)
    with dspy.context(lm=dspy.LM("simulated/student", engine=engine, cache=False)):
        optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=task.trainset,
                          valset=task.valset)
    val_questions = {ex.question for ex in task.valset}
    train_questions = {ex.question for ex in task.trainset}
    is_val = [any(q in user for q in val_questions) for user, _, _ in engine.log]
    last_train_end = max(end for (user, _, end), v in zip(engine.log, is_val, strict=True)
                         if not v and any(q in user for q in train_questions))
    first_val_start = min(start for (_, start, _), v in zip(engine.log, is_val, strict=True) if v)
    assert first_val_start < last_train_end


SEEN: list[str] = []  # questions AlwaysRaises was run on (module level: the optimizer runs copies of the program)


class AlwaysRaises(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer: float")

    def forward(self, question):
        SEEN.append(question)
        time.sleep(0.005)
        raise RuntimeError("broken program")


def test_a_program_that_always_raises_fails_fast_without_running_the_valset_at_many_threads():
    task = SimulatedTask.create(16, 16, seed=1)
    program = AlwaysRaises()
    SEEN.clear()
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=task.world.teacher_lm(), num_threads=8)
    with dspy.context(lm=task.world.student_lm()), pytest.raises(ValueError, match="the program raised on every"):
        optimizer.compile(program, trainset=task.trainset, valset=task.valset)
    assert set(SEEN) == {ex.question for ex in task.trainset}  # every training example, no valset one


def test_racing_ahead_makes_the_same_requests_every_time_so_a_cached_rerun_pays_nothing(noisy_task):
    saved = dspy.cache
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    try:
        engine = SlowStudent(noisy_task.world, latency=0.004)
        student = dspy.LM("simulated/student", engine=engine)  # DSPy's cache on: a repeated request is not sent
        runs = []
        for _ in range(2):
            optimizer = ConceptDistillation(metric=noisy_task.world.metric, teacher_lm=noisy_task.world.teacher_lm(),
                                            auto="medium", screen_size=0, num_threads=16, seed=0)
            with dspy.context(lm=student):
                runs.append(optimizer.compile(dspy.ChainOfThought("question -> answer: float"),
                                              trainset=noisy_task.trainset, valset=noisy_task.valset).distillation)
            runs[-1].engine_calls = engine.calls
    finally:
        dspy.cache = saved
    first, second = runs
    assert engine.most_variants >= 3  # it did race ahead
    assert second.engine_calls == first.engine_calls  # nothing new was asked the second time
    assert second.student_calls == 0 and [r.text for r in second.accepted_rules] == [
        r.text for r in first.accepted_rules]


class ModeRecording(SimulatedStudentEngine):
    """The simulated world's scripted student (not a real model); logs whether each request asked for JSON."""

    def __init__(self, world) -> None:
        super().__init__(world)
        self.json_modes: list[bool] = []

    def complete(self, request):
        time.sleep(0.03)  # slower than submitting a batch: outcomes arrive on worker threads
        self.json_modes.append(Prompt.of(request).json_mode)
        return super().complete(request)


def test_work_started_from_a_worker_thread_keeps_the_callers_dspy_settings():
    task = SimulatedTask.create(16, 16, seed=1)
    engine = ModeRecording(task.world)
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=task.world.teacher_lm(), auto="light",
                                    num_threads=8, seed=0)
    with dspy.context(lm=dspy.LM("simulated/student", engine=engine, cache=False), adapter=dspy.JSONAdapter()):
        optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=task.trainset,
                          valset=task.valset)
    assert len(engine.json_modes) >= len(task.trainset) + len(task.valset)
    assert all(engine.json_modes)  # the baseline (started beside the trainset) used the caller's adapter too


@pytest.fixture
def run_ahead(monkeypatch) -> list[list[str]]:
    """The rule texts of every rule set the racer started the next round's trainset with."""
    started: list[list[str]] = []
    ahead = racing.Racer._ahead

    def spy(self, ruleset, example, phase):
        submitted = ahead(self, ruleset, example, phase)
        if submitted and phase == "mistakes" and [r.text for r in ruleset] not in started:
            started.append([rule.text for rule in ruleset])
        return submitted

    monkeypatch.setattr(racing.Racer, "_ahead", spy)
    return started


def test_the_next_rounds_trainset_runs_ahead_only_with_the_rules_in_force_at_the_end_of_the_round(run_ahead):
    task = SimulatedTask.create(30, 30, seed=0)  # no answer noise: the racer's predictions come true
    one, _, _ = _compile(task, 1)
    assert run_ahead == []
    result, _, _ = _compile(task, 16)
    end_of_round_1 = [r.text for r in result.rules if r.round == 0 and r.status == "accepted"]
    assert all(sorted(rules) == sorted(end_of_round_1) for rules in run_ahead)  # never a wrong guess
    paid = [r.usage.calls("student", "mistakes") for r in (one, result)]
    assert paid[0] == paid[1] == 2 * len(task.trainset)  # every run-ahead request was used by round 2


def test_the_next_rounds_trainset_runs_started_during_verification_are_booked_as_phase_1s(monkeypatch):
    """The racer runs the next round's trainset ahead on spare threads; the ledger books those runs under phase 1
    ("mistakes"), whose work they are, not under verification, which scheduled them."""
    task = SimulatedTask.create(30, 30, seed=2, flip_rate=0.1)  # round 1 ends with a leader and no rival left
    trainset = {id(ex) for ex in task.trainset}
    ahead: list[dspy.Example] = []
    started = racing.Racer._ahead

    def spy(self, ruleset, example, phase):
        submitted = started(self, ruleset, example, phase)
        if submitted and id(example) in trainset:
            ahead.append(example)
        return submitted

    monkeypatch.setattr(racing.Racer, "_ahead", spy)
    # a wide window and a stricter bound: round 1's races end with one leader and the rest of the window decided
    monkeypatch.setitem(PRESETS, "heavy", dataclasses.replace(PRESETS["heavy"], window=6, confidence_z=0.6,
                                                              val_passes=8, hold=True))
    one, decisions, _ = _compile(task, 1, auto="heavy")
    assert ahead == []  # at one thread nothing runs ahead
    many, same_decisions, _ = _compile(task, 16, auto="heavy")
    assert same_decisions == decisions
    assert len(ahead) >= len(task.trainset) // 2  # much of round 2's trainset ran during round 1's verification
    # booked as phase 1's, as at one thread: two trainset passes of one LM call per run
    assert many.usage.calls("student", "mistakes") == one.usage.calls("student", "mistakes") == 2 * len(task.trainset)


def test_nothing_runs_ahead_into_a_round_that_will_not_come(noisy_task, run_ahead):
    engine = SlowStudent(noisy_task.world, latency=0.004)
    optimizer = ConceptDistillation(metric=noisy_task.world.metric, teacher_lm=noisy_task.world.teacher_lm(),
                                    auto="medium", rounds=1, screen_size=0, num_threads=16, seed=0)
    with dspy.context(lm=dspy.LM("simulated/student", engine=engine, cache=False)):
        optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=noisy_task.trainset,
                          valset=noisy_task.valset)
    assert run_ahead == []


class TimedTeacher(ScriptedTeacherEngine):
    """The simulated world's scripted teacher (not a real model); logs when each request arrives."""

    def __init__(self, world) -> None:
        super().__init__(world)
        self.starts: list[float] = []

    def complete(self, request):
        self.starts.append(time.perf_counter())
        return super().complete(request)


def test_the_teacher_does_not_wait_behind_the_valset_baseline():
    task = SimulatedTask.create(16, 32, seed=1)
    student, teacher = Recording(task.world, latency=0.02), TimedTeacher(task.world)
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=dspy.LM("simulated/teacher", engine=teacher),
                                    auto="light", num_threads=4, seed=0)
    with dspy.context(lm=dspy.LM("simulated/student", engine=student, cache=False)):
        optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=task.trainset,
                          valset=task.valset)
    val_questions = {ex.question for ex in task.valset}
    baseline_starts = sorted(start for user, start, _ in student.log if any(q in user for q in val_questions))
    assert len(baseline_starts) >= len(task.valset)
    assert teacher.starts and min(teacher.starts) < baseline_starts[len(task.valset) - 1]


class ManualEvaluator:
    """A stand-in for ``Evaluator`` whose jobs the test finishes by hand (no LM): ``jobs`` lists (ruleset, example
    index, future, urgent) in submission order."""

    def __init__(self, threads: int, examples) -> None:
        self.executor = type("E", (), {"num_threads": threads})()
        self.index = {id(ex): i for i, ex in enumerate(examples)}
        self.jobs: list[tuple[RuleSet, int, Future, bool]] = []
        self.lock = threading.Lock()

    def key(self, ruleset: RuleSet) -> str:
        return repr(ruleset.signature())

    def example_key_of(self, example) -> str:
        return str(self.index[id(example)])

    def submit(self, ruleset, example, phase, *, urgent=False):
        future: Future = Future()
        with self.lock:
            self.jobs.append((ruleset, self.index[id(example)], future, urgent))
        return future

    def submitted(self) -> int:
        with self.lock:
            return len(self.jobs)

    def finish(self, k: int, score: float) -> None:
        with self.lock:
            future = self.jobs[k][2]
        if not future.done():
            future.set_result(Outcome(score=score, calls=1))


def _wait_until(condition, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


def _settings(window: int) -> SelectionSettings:
    return SelectionSettings(min_gain=0.0, confidence_z=1.0, futility_z=3.0, screen_size=0, max_score=1.0,
                             prior_variance=0.25, window=window)


def test_the_batch_in_front_is_urgent_and_work_ahead_stays_within_the_reserve():
    """Work ahead is what a copy of the policy asks for next on predicted outcomes: with spare threads the racer
    submits it behind the required batch (which starts first), and never more than the account's reserve is
    outstanding, however the jobs finish."""
    threads, n = 8, 40
    valset = [dspy.Example(question=f"q{i}", answer=1.0).with_inputs("question") for i in range(n)]
    evaluator = ManualEvaluator(threads, valset)
    account = RequiredAccount(lambda: 400)  # reserve: 5% of 400 = 20 runs
    rules = [Rule(text=f"Rule number {k} says something new.", predictor="predict") for k in range(4)]
    selection = racing.Selection(rules, RuleSet(), [0.0] * n, list(range(n)), _settings(window=4), runs=360)
    racer = racing.Racer(evaluator, valset, selection, account=account)
    worker = threading.Thread(target=racer.run, daemon=True)
    worker.start()
    assert _wait_until(lambda: evaluator.submitted() > 4 * 6)  # four first chunks, then work ahead
    urgent = [job[3] for job in evaluator.jobs]
    assert urgent[:24] == [True] * 24 and not any(urgent[24:])
    helpful = RuleSet([rules[2]])
    k = 0
    while worker.is_alive() and k < 2000:
        if k < evaluator.submitted():
            ruleset = evaluator.jobs[k][0]
            evaluator.finish(k, 1.0 if rules[2] in list(ruleset) else 0.0)  # rule 2 fixes every example
            k += 1
            assert account.ahead <= account.reserve
        time.sleep(0.0005)
    worker.join(5)
    assert [r.text for r in selection.in_force] == [rules[2].text]
    assert any(not job[3] for job in evaluator.jobs if job[0] != helpful)  # work ahead did run
    del helpful


def test_the_next_rounds_trainset_runs_ahead_once_the_leader_is_on_course_and_nothing_else_gains():
    threads, n = 8, 20
    valset = [dspy.Example(question=f"v{i}", answer=1.0).with_inputs("question") for i in range(n)]
    trainset = [dspy.Example(question=f"t{i}", answer=1.0).with_inputs("question") for i in range(10)]
    evaluator = ManualEvaluator(threads, valset + trainset)
    account = RequiredAccount(lambda: 10_000)
    good, poor = (Rule(text=f"Rule {name} says something new.", predictor="predict") for name in ("good", "poor"))
    selection = racing.Selection([good, poor], RuleSet(), [0.0] * n, list(range(n)), _settings(window=2))
    racer = racing.Racer(evaluator, valset, selection, account=account, next_trainset=trainset)
    worker = threading.Thread(target=racer.run, daemon=True)
    worker.start()
    k = 0
    while worker.is_alive() and k < 2000:
        if k < evaluator.submitted():
            evaluator.finish(k, 1.0 if good in list(evaluator.jobs[k][0]) else 0.0)
            k += 1
        time.sleep(0.0005)
    worker.join(5)
    ahead = {job[1] for job in evaluator.jobs if job[0] == RuleSet([good]) and job[1] >= n}
    assert [r.text for r in selection.in_force] == [good.text]
    assert ahead == set(range(n, n + len(trainset)))  # the whole trainset, with the rule predicted to join
