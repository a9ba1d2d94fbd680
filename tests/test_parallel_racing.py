"""Parallel racing: with threads to spare, several candidates race at once (each against the rules in force it
would meet at its turn, predicted from the evidence so far), yet every decision is the one a 1-thread run takes,
and speculation never spends budget that the in-order races of the round could still need."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import Future

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.phases import racing
from dspy_concept_distill.phases.statistics import VerificationSettings
from dspy_concept_distill.records import Outcome
from dspy_concept_distill.rules import Rule, RuleSet
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


@pytest.fixture(autouse=True)
def races_at_once(monkeypatch) -> list[int]:
    """The most races with work submitted and not yet taken at one moment, per compile (deterministic: the racer
    plans from taken work only)."""
    most: list[int] = []
    submit = racing.Racer._submit

    def recording(self, unit):
        taken = submit(self, unit)
        if not hasattr(self, "_most"):
            self._most = 0
            most.append(0)
        self._most = max(self._most, len({id(u.race) for u in self.units if u.race is not None}))
        most[-1] = max(most[-1], self._most)
        return taken

    monkeypatch.setattr(racing.Racer, "_submit", recording)
    return most


def _compile(task: SimulatedTask, threads: int, **kwargs):
    engine = SlowStudent(task.world, latency=0.004)
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=task.world.teacher_lm(), auto="medium",
                                    screen_size=0, num_threads=threads, seed=0, **kwargs)
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


def test_many_threads_race_several_candidates_at_once_and_decide_as_one_thread_does(noisy_task, one_thread,
                                                                                     races_at_once):
    result_1, decisions_1, engine_1 = one_thread
    races_at_once.clear()
    result_16, decisions_16, engine_16 = _compile(noisy_task, 16)
    assert result_16.student_calls == engine_16.calls  # work raced ahead and still in flight at the end is booked
    assert any(status == "accepted" for _, status, *_ in decisions_1)
    assert any(status == "rejected" for _, status, *_ in decisions_1)
    assert decisions_16 == decisions_1  # every rule: same status, reason, examples seen and gain
    assert result_16.final_score == result_1.final_score
    assert engine_1.most_variants == 1
    assert max(races_at_once) >= 3  # the race in front and at least two candidates behind it, in one round


def test_speculation_leaves_the_budget_the_in_order_races_need(noisy_task, one_thread):
    result_1, decisions_1, _ = one_thread
    limit = result_1.student_calls  # exactly what the 1-thread run spent: no room for any wasted request
    _, decisions_16, engine = _compile(noisy_task, 16, max_student_calls=limit)
    assert engine.calls <= limit
    round_1 = [d for d, rule in zip(decisions_1, result_1.rules, strict=True) if rule.round == 0]
    assert decisions_16[:len(round_1)] == round_1


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


def test_racing_ahead_makes_the_same_requests_every_time_so_a_cached_rerun_pays_nothing(noisy_task, races_at_once):
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
    assert races_at_once[0] >= 3  # it did race ahead
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
    run_next_round = racing.Racer._run_next_round

    def spy(self, final, start, room):
        before = len(self.units)
        run_next_round(self, final, start, room)
        if len(self.units) > before:
            started.append([rule.text for rule in final])

    monkeypatch.setattr(racing.Racer, "_run_next_round", spy)
    return started


def test_the_next_rounds_trainset_runs_ahead_with_the_rules_in_force_at_the_end_of_the_round(run_ahead):
    task = SimulatedTask.create(30, 30, seed=0)  # no answer noise: the racer's predictions come true
    one, _, _ = _compile(task, 1)
    assert run_ahead == []
    result, _, _ = _compile(task, 16)
    end_of_round_1 = [r.text for r in result.rules if r.round == 0 and r.status == "accepted"]
    assert run_ahead and all(rules == end_of_round_1 for rules in run_ahead)
    paid = [r.usage.calls("student", "mistakes") for r in (one, result)]
    assert paid[0] == paid[1] == 2 * len(task.trainset)  # every run-ahead request was used by round 2


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
    index, future) in submission order."""

    def __init__(self, threads: int, valset) -> None:
        self.executor = type("E", (), {"num_threads": threads})()
        self.budget = type("B", (), {"remaining": staticmethod(lambda role: None)})()
        self.index = {id(ex): i for i, ex in enumerate(valset)}
        self.jobs: list[tuple[object, int, Future]] = []
        self.urgent: list[bool] = []
        self.lock = threading.Lock()

    def submit(self, ruleset, example, phase, *, urgent=False):
        future: Future = Future()
        with self.lock:
            self.jobs.append((ruleset, self.index[id(example)], future))
            self.urgent.append(urgent)
        return future

    def submitted(self) -> int:
        with self.lock:
            return len(self.jobs)

    def finish(self, k: int, score: float = 1.0) -> None:
        with self.lock:
            future = self.jobs[k][2]
        future.set_result(Outcome(score=score))


def _wait_until(condition, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


def test_a_finished_job_frees_its_place_at_once_and_the_queue_stays_bounded():
    """Jobs are taken one at a time in submission order: when the oldest job finishes, the racer plans again at once,
    without waiting for the rest of the chunk it was submitted with. The race in front, with no evidence yet, fills
    the places its first chunk leaves free, and at most num_threads + QUEUE_SHARE x num_threads jobs are waiting to
    be taken."""
    threads, n = 8, 40
    valset = [dspy.Example(question=f"q{i}", answer=1.0).with_inputs("question") for i in range(n)]
    evaluator = ManualEvaluator(threads, valset)
    settings = VerificationSettings(min_gain=1 / n, confidence_z=2.0, screen_size=0, max_score=1.0)
    track = racing.Track(evaluator, valset, list(range(n)), settings)
    rule = Rule(text="Always check the units before answering.", predictor="predict")
    racer = racing.Racer(track)
    window = threads + math.ceil(racing.QUEUE_SHARE * threads)
    result: list[racing.Race] = []
    worker = threading.Thread(target=lambda: result.append(racer.decide([rule], 0, RuleSet(), [0.0] * n)),
                              daemon=True)
    worker.start()
    assert _wait_until(lambda: evaluator.submitted() == window)  # first chunk (6) + the rest of the window
    assert evaluator.urgent[:window] == [True] * 6 + [False] * (window - 6)  # the chunk in front starts first
    time.sleep(0.05)
    assert evaluator.submitted() == window  # and no more while nothing was taken
    evaluator.finish(0)  # the oldest job of the first chunk; five of that chunk are still running
    assert _wait_until(lambda: evaluator.submitted() == window + 1)
    k = 1
    while worker.is_alive() and k < 200:  # then every job: the candidate wins every example and is accepted
        if k < evaluator.submitted():
            assert evaluator.submitted() - k <= window
            evaluator.finish(k)
            k += 1
        time.sleep(0.001)
    worker.join(5)
    assert result and result[0].decision.verdict is racing.Verdict.ACCEPT
    assert sorted(i for _, i, _ in evaluator.jobs) == list(range(n))  # the valset, each example once


def test_work_ahead_always_leaves_every_undecided_race_a_whole_valset_of_budget(monkeypatch):
    """With a budget of two races and ten runs (the head and one candidate behind), the candidate behind races ahead
    while the head, gaining nothing, is neither accepted nor yet dropped, but it may not spend the head's share:
    after every submission, the budget not yet spoken for covers what the head may still need plus a whole valset
    for the one behind."""
    threads, n = 8, 40
    valset = [dspy.Example(question=f"q{i}", answer=1.0).with_inputs("question") for i in range(n)]
    evaluator = ManualEvaluator(threads, valset)
    evaluator.budget = type("B", (), {"remaining": staticmethod(lambda role: 2 * n + 10)})()
    settings = VerificationSettings(min_gain=1 / n, confidence_z=2.0, screen_size=0, max_score=1.0)
    track = racing.Track(evaluator, valset, list(range(n)), settings)
    head_rule = Rule(text="Always check the units before answering.", predictor="predict")
    behind_rule = Rule(text="Subtract what was given away.", predictor="predict")
    racer = racing.Racer(track)
    violations: list[tuple[float, int]] = []
    submit = racing.Racer._submit

    def checked(self, unit):
        taken = submit(self, unit)
        head = self.races.get((head_rule.id, RuleSet()))
        if head is not None and head.decision is None and self.budget_left < (n - head.sent) + n:
            violations.append((self.budget_left, head.sent))
        return taken

    monkeypatch.setattr(racing.Racer, "_submit", checked)
    result: list[racing.Race] = []
    worker = threading.Thread(target=lambda: result.append(
        racer.decide([head_rule, behind_rule], 0, RuleSet(), [0.0] * n)), daemon=True)
    worker.start()
    head_variant, k = RuleSet([head_rule]), 0
    while worker.is_alive() and k < 400:
        if k < evaluator.submitted():
            evaluator.finish(k, 0.0 if evaluator.jobs[k][0] == head_variant else 1.0)  # the head gains nothing
            k += 1
        time.sleep(0.001)
    worker.join(5)
    assert result and result[0].decision.verdict is not racing.Verdict.ACCEPT
    assert any(ruleset != head_variant for ruleset, _, _ in evaluator.jobs)  # the one behind did race ahead
    assert violations == []
