"""The executor never re-submits a running job, runs jobs in the caller's DSPy context, and StopSignal turns a stop
file, SIGTERM or Ctrl-C into a request to stop (a second Ctrl-C interrupts at once)."""

from __future__ import annotations

import os
import signal
import threading
import time

import dspy
import pytest

from dspy_concept_distill.runtime.executor import STOP_FILE, Executor, StopRequestedError, StopSignal
from dspy_concept_distill.testing.faults import guarded_signals


@pytest.mark.parametrize("threads", [1, 4])
def test_a_slow_job_runs_once_and_results_keep_input_order(threads):
    runs: dict[int, int] = {}
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            runs[i] = runs.get(i, 0) + 1
        time.sleep(0.6 if i == 2 else 0.01)  # a straggler, well past anything a re-submission timer would wait
        return i * 10

    executor = Executor(threads)
    try:
        assert executor.map(job, range(8)) == [i * 10 for i in range(8)]
    finally:
        executor.close()
    assert runs == dict.fromkeys(range(8), 1)


def test_jobs_see_the_callers_dspy_context_in_worker_threads():
    marker = dspy.LM("openai/marker-model")
    executor = Executor(4)
    try:
        with dspy.context(lm=marker):
            seen = executor.map(lambda _: dspy.settings.lm, range(6))
    finally:
        executor.close()
    assert all(lm is marker for lm in seen)


def test_worker_threads_leave_ctrl_c_and_sigterm_to_the_main_thread():
    """Blocked in workers, so the kernel hands them to the main thread, whose wait is interrupted at once."""
    executor = Executor(3)
    try:
        masks = executor.map(lambda _: signal.pthread_sigmask(signal.SIG_BLOCK, []), range(3))
    finally:
        executor.close()
    assert all({signal.SIGINT, signal.SIGTERM} <= set(mask) for mask in masks)
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the caller's thread is untouched


def test_map_waits_for_every_job_before_raising_the_first_error():
    finished = []

    def job(i: int) -> int:
        if i == 0:
            raise RuntimeError("boom")
        time.sleep(0.05)
        finished.append(i)
        return i

    executor = Executor(3)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            executor.map(job, range(5))
    finally:
        executor.close()
    assert sorted(finished) == [1, 2, 3, 4]


def test_a_stop_file_is_a_stop_request(tmp_path):
    stop = StopSignal(tmp_path / STOP_FILE)
    assert not stop.requested
    stop.check()
    (tmp_path / STOP_FILE).touch()
    assert stop.requested and "stop file" in stop.reason
    with pytest.raises(StopRequestedError, match="stop file"):
        stop.check()


@pytest.fixture(name="guarded_signals")
def _guarded_signals():
    with guarded_signals() as received:
        yield received


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_request_a_stop_and_the_handlers_are_restored(guarded_signals, sig):
    before = signal.getsignal(sig)
    stop = StopSignal()
    with stop.installed():
        os.kill(os.getpid(), sig)
        time.sleep(0.01)
        assert stop.requested and stop.reason == signal.Signals(sig).name
    assert signal.getsignal(sig) is before
    assert guarded_signals == []  # the library's handler took it, not the fallback


def test_a_second_ctrl_c_interrupts_at_once(guarded_signals):
    stop = StopSignal()
    with pytest.raises(KeyboardInterrupt), stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        pytest.fail("a second Ctrl-C did not interrupt")
    assert guarded_signals == []


def test_signal_handlers_are_left_alone_outside_the_main_thread(guarded_signals):
    before = signal.getsignal(signal.SIGTERM)
    inside = []

    def worker():
        with StopSignal().installed():
            inside.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert inside == [before]


def _gated_evaluator():
    """An Evaluator on 4 threads whose student (the simulated world's scripted student, not a real model) answers
    only once ``gate`` is set: (evaluator, gate, student LM, executor, cache, a valset example)."""
    from dspy_concept_distill.runtime.evaluator import EvalCache, Evaluator
    from dspy_concept_distill.runtime.executor import Executor, StopSignal
    from dspy_concept_distill.runtime.ledger import Ledger
    from dspy_concept_distill.runtime.metering import Budget
    from dspy_concept_distill.runtime.metric import MetricAdapter
    from dspy_concept_distill.testing import SimulatedWorld

    world = SimulatedWorld()
    _, val = world.split(2, 5)
    student = world.student_lm()
    gate = threading.Event()
    original = student.engine.complete

    def slow(request):
        gate.wait(5)
        return original(request)

    student.engine.complete = slow
    dspy.configure(lm=student)
    program = dspy.ChainOfThought("question -> answer: float")
    base = {n: p.signature.instructions for n, p in program.named_predictors()}
    executor, cache = Executor(4), EvalCache()
    evaluator = Evaluator(program, base, MetricAdapter(world.metric), Budget(Ledger(), None, None), executor,
                          StopSignal(), cache)
    return evaluator, gate, student, executor, cache, val[0]


def test_a_pair_asked_for_again_while_it_runs_shares_the_run():
    from dspy_concept_distill.rules import RuleSet

    evaluator, gate, student, executor, _, example = _gated_evaluator()
    first = evaluator.submit(RuleSet(), example, "t")
    second = evaluator.submit(RuleSet(), example, "t")
    gate.set()
    assert first.result(5).score == second.result(5).score
    executor.close()
    assert student.engine.calls == 1


def test_an_urgent_job_starts_before_every_job_still_waiting():
    started: list[str] = []
    gate = threading.Event()

    def job(name: str) -> str:
        started.append(name)
        gate.wait(5)
        return name

    executor = Executor(2)
    try:
        normal = [executor.submit(job, f"normal-{i}") for i in range(6)]
        time.sleep(0.05)  # two normal jobs are running, four are waiting
        urgent = executor.submit(job, "urgent", urgent=True)
        gate.set()
        assert urgent.result(5) == "urgent" and [f.result(5) for f in normal] == [f"normal-{i}" for i in range(6)]
    finally:
        executor.close()
    assert started[:3] == ["normal-0", "normal-1", "urgent"]  # then the waiting ones, in submission order
    assert started[3:] == [f"normal-{i}" for i in range(2, 6)]


def test_close_cancels_the_jobs_still_waiting_and_waits_for_the_running_ones():
    release = threading.Event()
    executor = Executor(1 + 1)
    running = [executor.submit(release.wait, 5) for _ in range(2)]
    waiting = executor.submit(time.sleep, 0)
    time.sleep(0.05)
    threading.Timer(0.1, release.set).start()
    executor.close()
    assert all(f.done() and f.result() is True for f in running)
    assert waiting.cancelled()
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(time.sleep, 0)


def test_a_pair_that_finishes_while_it_is_asked_for_again_is_not_run_twice(monkeypatch):
    """The run finishes between the second ask's cache lookup and its in-flight lookup (forced here by a cache
    lookup that lets the run finish first): the second ask must find the outcome, not start the pair again."""
    from dspy_concept_distill.rules import RuleSet

    evaluator, gate, student, executor, cache, example = _gated_evaluator()
    first = evaluator.submit(RuleSet(), example, "t")
    lookup = cache.get

    def stale_lookup(key):
        found = lookup(key)  # still running: a miss
        gate.set()
        first.result(5)  # the run finishes and leaves the in-flight table before the caller looks there
        time.sleep(0.05)
        return found

    monkeypatch.setattr(cache, "get", stale_lookup)
    second = evaluator.submit(RuleSet(), example, "t")
    monkeypatch.setattr(cache, "get", lookup)
    assert second.result(5).score == first.result(5).score
    executor.close()
    assert student.engine.calls == 1
