"""The usage ledger and hard budgets, driven against a fault-injecting engine (testing/faults.py): every request the
LM receives is booked once, retries included; in-flight requests never pass a limit at any thread count; cache
hits are counted apart; usage reaches the caller's ``dspy.track_usage()``. Prices come from a fixed table or from
DSPy's bundled snapshot, never from the network."""

from __future__ import annotations

import functools
import socket
import threading
import time

import dspy
import pytest

from dspy_concept_distill.runtime import ledger as ledger_module
from dspy_concept_distill.runtime import metering, pricing
from dspy_concept_distill.runtime.ledger import Ledger
from dspy_concept_distill.runtime.metering import Budget, BudgetExhaustedError, Role, metered, phase
from dspy_concept_distill.testing.faults import RATE_LIMIT, SERVER_ERROR, TIMEOUT, Fault, FaultyEngine, every


def echo(prompt, index):
    return f"reply {index}"


def lm_with(faults=None, *, num_retries=3, latency=0.0, model="faulty/student") -> tuple[dspy.LM, FaultyEngine]:
    engine = FaultyEngine(reply=echo, faults=faults, latency=latency)
    return dspy.LM(model, engine=engine, num_retries=num_retries), engine


def test_a_permit_is_taken_before_a_request_and_in_flight_requests_count_against_the_limit():
    ledger = Ledger()
    budget = Budget(ledger, max_student_calls=3, max_teacher_calls=None)
    for _ in range(3):
        budget.acquire(Role.STUDENT)
    with pytest.raises(BudgetExhaustedError, match="student call budget of 3"):
        budget.acquire(Role.STUDENT)  # three in flight, none booked yet
    budget.settle(Role.STUDENT, "m", {"prompt_tokens": 5, "completion_tokens": 1})
    with pytest.raises(BudgetExhaustedError):
        budget.acquire(Role.STUDENT)  # one booked, two in flight
    budget.release(Role.STUDENT)  # a permit whose request was never sent comes back
    budget.acquire(Role.STUDENT)
    assert ledger.calls(Role.STUDENT) == 1 and budget.remaining(Role.STUDENT) == 0 and budget.exhausted(Role.STUDENT)
    budget.acquire(Role.TEACHER)  # no teacher limit
    assert not budget.exhausted(Role.TEACHER)


def test_retried_requests_are_each_booked_and_each_take_a_permit(monkeypatch):
    monkeypatch.setattr(metering, "MAX_RETRY_DELAY", 0.0)
    lm, engine = lm_with({0: Fault(RATE_LIMIT), 1: Fault(SERVER_ERROR), 2: Fault(TIMEOUT)})
    budget = Budget(Ledger(), max_student_calls=10, max_teacher_calls=None)
    assert metered(lm, budget, Role.STUDENT)("hello") == ["reply 3"]
    assert engine.received == budget.ledger.calls(Role.STUDENT) == 4
    assert lm.num_retries == 3  # the caller's LM is not changed


def test_retries_stop_at_the_budget(monkeypatch):
    monkeypatch.setattr(metering, "MAX_RETRY_DELAY", 0.0)
    lm, engine = lm_with(every(1, Fault(RATE_LIMIT)))
    budget = Budget(Ledger(), max_student_calls=2, max_teacher_calls=None)
    with pytest.raises(BudgetExhaustedError):
        metered(lm, budget, Role.STUDENT)("hello")
    assert engine.received == budget.ledger.calls(Role.STUDENT) == 2


def test_a_request_cut_short_by_ctrl_c_is_still_booked_and_its_permit_returned():
    def interrupted(prompt, index):
        raise KeyboardInterrupt

    engine = FaultyEngine(reply=interrupted)
    budget = Budget(Ledger(), max_student_calls=5, max_teacher_calls=None)
    with pytest.raises(KeyboardInterrupt):
        metered(dspy.LM("faulty/student", engine=engine), budget, Role.STUDENT)("hello")
    assert engine.received == budget.ledger.calls(Role.STUDENT) == 1 and budget.remaining(Role.STUDENT) == 4


def test_a_retry_after_of_zero_means_retry_at_once():
    lm, engine = lm_with({0: Fault(RATE_LIMIT, retry_after=0.0)})
    start = time.monotonic()
    metered(lm, Budget(Ledger(), None, None), Role.STUDENT)("hello")
    assert engine.received == 2
    assert time.monotonic() - start < 0.5  # not the exponential back-off's 1 s


def test_a_hard_limit_holds_with_32_threads_hammering_one_lm(monkeypatch):
    monkeypatch.setattr(metering, "MAX_RETRY_DELAY", 0.0)
    lm, engine = lm_with(every(5, Fault(RATE_LIMIT)), latency=0.002)
    budget = Budget(Ledger(), max_student_calls=150, max_teacher_calls=None)
    student = metered(lm, budget, Role.STUDENT)

    def hammer(worker: int) -> None:
        for i in range(20):
            try:
                student(f"worker {worker} request {i}")
            except BudgetExhaustedError:
                return
            except dspy.utils.exceptions.LMError:
                continue

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert engine.received == budget.ledger.calls(Role.STUDENT) == 150
    assert engine.max_in_flight > 1  # the threads really overlapped


def test_cache_hits_are_counted_apart_and_use_up_no_budget():
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    lm, engine = lm_with()
    budget = Budget(Ledger(), max_student_calls=2, max_teacher_calls=None)
    student = metered(lm, budget, Role.STUDENT)
    with phase("mistakes"):
        first, second, third = student("same prompt"), student("same prompt"), student("another prompt")
    assert first == second != third and engine.received == 2
    row = budget.ledger.rows()[0]
    assert (row.phase, row.calls, row.cache_hits) == ("mistakes", 2, 1)
    assert budget.ledger.calls(Role.STUDENT) == 2 and budget.ledger.cache_hits(Role.STUDENT) == 1


@pytest.mark.parametrize("threads", [1, 4])
def test_usage_reaches_the_callers_track_usage_from_any_thread(threads):
    lm, engine = lm_with()
    with dspy.track_usage() as tracker:
        budget = Budget(Ledger(), None, None, dspy.settings.usage_tracker)
        student = metered(lm, budget, Role.STUDENT)
        runner = [threading.Thread(target=student, args=(f"prompt {i}",)) for i in range(threads)]
        for thread in runner:
            thread.start()
        for thread in runner:
            thread.join()
    assert len(tracker.usage_data["faulty/student"]) == engine.received == threads
    assert tracker.get_total_tokens()["faulty/student"]["prompt_tokens"] > 0


def test_ledger_survives_a_copy_and_prices_rows_from_a_price_table(monkeypatch):
    table = {"acme/big": (2e-6, 8e-6)}
    monkeypatch.setattr(ledger_module, "price", functools.partial(pricing.price, table=table))
    ledger = Ledger()
    ledger.record(Role.TEACHER, "induction", "acme/big", {"prompt_tokens": 1000, "completion_tokens": 100})
    ledger.record(Role.TEACHER, "induction", "acme/big", {"input_tokens": 500, "output_tokens": 50})
    ledger.record(Role.STUDENT, "mistakes", "acme/unknown", {"prompt_tokens": 10, "completion_tokens": 1})
    import copy

    for copied in (ledger, copy.deepcopy(ledger), Ledger.from_dict(ledger.to_dict())):
        costs = {row.model: row.cost for row in copied.rows()}
        assert costs["acme/big"] == pytest.approx(1500 * 2e-6 + 150 * 8e-6)
        assert costs["acme/unknown"] is None
        assert copied.totals()[Role.TEACHER]["calls"] == 2 and copied.totals()[Role.STUDENT]["cost"] is None


def test_price_uses_the_given_table_before_anything_else():
    table = {"openai/gpt-4o-mini": (1.0, 10.0), "local/tiny": (0.5, 0.5)}
    assert pricing.price("openai/gpt-4o-mini", 3, 2, table=table) == 23.0
    assert pricing.price("local/tiny", 2, 2, table=table) == 2.0
    assert pricing.price("simulated/student", 100, 100) is None  # an in-process engine has no bill
    assert pricing.price("nobody/no-such-model-xyz", 100, 100) is None


def test_bundled_prices_are_read_offline(monkeypatch):
    """A known model is priced from DSPy's bundled snapshot with no attempt to reach the network, even when DSPy's
    model metadata was never loaded and the LiteLLM offline flag is not set."""
    import dspy.clients.model_metadata as metadata

    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP", raising=False)
    monkeypatch.setattr(metadata, "_data", None)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pricing._bundled_rates.cache_clear()
    try:
        cost = pricing.price("openai/gpt-4o-mini", 1_000_000, 1_000_000)
        rates = pricing.rates("openai/gpt-4o-mini")
    finally:
        pricing._bundled_rates.cache_clear()
    assert attempts == []
    assert rates is not None and 0 < rates[0] < rates[1]  # output tokens cost more than input tokens
    assert cost == pytest.approx(1_000_000 * (rates[0] + rates[1]))


def test_a_closed_budget_sends_nothing_more_and_a_run_it_stops_is_not_recorded():
    """After ``close`` (the run is over or was interrupted) every request is refused before it is sent, even with
    budget left, so a multi-call program run still in flight stops at its next LM call; the evaluator records no
    outcome for that run, so nothing is learned from a half-done run."""
    from dspy_concept_distill.rules import RuleSet
    from dspy_concept_distill.runtime.evaluator import EvalCache, Evaluator, _NotRun
    from dspy_concept_distill.runtime.executor import Executor, StopSignal
    from dspy_concept_distill.runtime.metering import RunClosedError
    from dspy_concept_distill.runtime.metric import MetricAdapter

    student, engine = lm_with()
    budget = Budget(Ledger(), max_student_calls=100, max_teacher_calls=None)
    dspy.configure(lm=student)
    program = dspy.Predict("question -> answer")
    cache = EvalCache()
    evaluator = Evaluator(program, {"self": program.signature.instructions}, MetricAdapter(lambda e, p: 1.0), budget,
                          Executor(1), StopSignal(), cache)
    example = dspy.Example(question="q", answer="a").with_inputs("question")
    budget.close("the run is over")
    outcome = evaluator.submit(RuleSet(), example, "t").result()
    assert isinstance(outcome, _NotRun) and isinstance(outcome.reason, RunClosedError)
    assert "the run is over" in str(outcome.reason)
    assert engine.received == 0 and len(cache) == 0 and budget.ledger.calls() == 0
    with pytest.raises(RunClosedError):
        budget.acquire(Role.TEACHER)
