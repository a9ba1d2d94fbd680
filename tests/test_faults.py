"""The optimizer's promises under faults (issue 7), end to end with the fault-injecting engine of testing/faults.py in
front of the scripted student and teacher: NaN and infinite metrics, exact hard budgets under retries and at 32
threads, stop requests (stop file, SIGTERM, Ctrl-C), failures that must not be silent, and no surprises (verify's own
state, cache hits shown apart, no network). Crash and resume are in persistence/test_checkpoint.py."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation, LMUnavailableError, RuleSet
from dspy_concept_distill.rules import MAX_RULE_CHARS, MAX_RULES_CHARS_PER_PREDICTOR
from dspy_concept_distill.runtime import metering
from dspy_concept_distill.runtime.executor import STOP_FILE
from dspy_concept_distill.testing import (
    Concept,
    ScriptedTeacherEngine,
    SimulatedStudentEngine,
    SimulatedWorld,
    format_reply,
)
from dspy_concept_distill.testing.faults import (
    EMPTY,
    GARBAGE,
    RATE_LIMIT,
    SERVER_ERROR,
    SIGINT,
    SIGTERM,
    STALL,
    TIMEOUT,
    TRUNCATED,
    Fault,
    FaultyEngine,
    every,
    first_tries,
    guarded_signals,
)
from tests.helpers import REPO

SIGNATURE = "question -> answer: float"
N = 10


class Setup:
    """The scripted world behind fault-injecting engines: ``student`` and ``teacher`` count what they receive."""

    def __init__(self, world: SimulatedWorld | None = None, *, student_faults=None, teacher_faults=None,
                 teacher_reply=None, n: int = N, student_retries: int = 3, student_latency: float = 0.0) -> None:
        self.world = world or SimulatedWorld()
        self.train, self.val = self.world.split(n, n)
        self.student = FaultyEngine(SimulatedStudentEngine(self.world), faults=student_faults,
                                    latency=student_latency)
        if teacher_reply is not None:
            self.teacher = FaultyEngine(reply=teacher_reply, faults=teacher_faults)
        else:
            self.teacher = FaultyEngine(ScriptedTeacherEngine(self.world), faults=teacher_faults)
        self.student_lm = dspy.LM("simulated/student", engine=self.student, num_retries=student_retries)
        self.teacher_lm = dspy.LM("simulated/teacher", engine=self.teacher)
        dspy.configure(lm=self.student_lm)

    def optimizer(self, **params) -> ConceptDistillation:
        params.setdefault("metric", self.world.metric)
        return ConceptDistillation(teacher_lm=self.teacher_lm, **params)

    def compile(self, program=None, **params):
        optimized = self.optimizer(**params).compile(program or dspy.ChainOfThought(SIGNATURE), trainset=self.train,
                                                     valset=self.val)
        return optimized, optimized.distillation

    def clean_score(self, program) -> float:
        """The program's valset score by the world's own 0/1 metric, with a fresh student LM: measured here, not
        read from the optimizer's report."""
        fresh = dspy.LM("simulated/student", engine=SimulatedStudentEngine(self.world))
        with dspy.context(lm=fresh):
            return dspy.Evaluate(devset=self.val, metric=self.world.metric, num_threads=1,
                                 display_progress=False)(program).score / 100


@pytest.fixture
def no_backoff(monkeypatch):
    """Retries without waiting (the back-off policy itself is tested in runtime/test_budget.py)."""
    monkeypatch.setattr(metering, "MAX_RETRY_DELAY", 0.0)


@pytest.fixture(name="signals")
def _signals():
    with guarded_signals() as received:
        yield received


# -- 1. non-finite metrics --------------------------------------------------------------------------------------------
def _is_plain(example) -> bool:
    return "What is the total?" in example.question


def _trap_metric(bad: float):
    """1 for a right answer, 0 for a wrong one, except ``bad`` (NaN or inf) for a wrong answer to a plain question
    (only the harmful rule makes those wrong) or to a 'units' question (so some training mistakes are metric
    errors)."""
    def metric(example, prediction, trace=None):
        if SimulatedWorld.metric(example, prediction):
            return 1.0
        return bad if _is_plain(example) or "cups" in example.question else 0.0
    return metric


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_metric_value_is_a_metric_error_that_scores_zero_and_never_wins(bad, caplog):
    setup = Setup(n=12)
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill"):
        optimized, result = setup.compile(metric=_trap_metric(bad), num_threads=4, max_rules_per_batch=8,
                                          max_student_calls=400)
    metric_errors = [m for m in result.mistakes if m.error_kind == "metric"]
    assert metric_errors and all(m.score == 0.0 for m in metric_errors)
    assert caplog.text.count("the metric failed on an example") == 1  # warned once
    assert not set(setup.world.harmful_rules) & {r.text for r in result.accepted_rules}
    assert all(r.gain is None or math.isfinite(r.gain) for r in result.rules)
    baseline = setup.clean_score(dspy.ChainOfThought(SIGNATURE))
    assert setup.clean_score(optimized) >= baseline and setup.clean_score(optimized) == 1.0


def test_a_metric_that_is_always_nan_fails_before_the_teacher_is_called():
    setup = Setup()
    with pytest.raises(ValueError, match="metric failed on every training example"):
        setup.compile(metric=lambda example, prediction, trace=None: float("nan"))
    assert setup.teacher.received == 0 and setup.student.received == len(setup.train)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), True])
def test_a_non_finite_or_boolean_metric_threshold_is_refused_at_construction(threshold):
    setup = Setup()
    with pytest.raises(ValueError, match="metric_threshold"):
        setup.optimizer(metric_threshold=threshold)


# -- 2. exact, hard budgets -------------------------------------------------------------------------------------------
def _mixed_faults(index, prompt):
    for modulus, offset, kind in ((7, 3, RATE_LIMIT), (11, 5, SERVER_ERROR), (13, 7, EMPTY), (17, 2, TRUNCATED),
                                  (19, 4, GARBAGE), (23, 6, TIMEOUT)):
        if index % modulus == offset:
            return Fault(kind)
    return None


@pytest.mark.parametrize("threads", [1, 32])
def test_the_ledger_equals_the_requests_the_lms_received(no_backoff, threads):
    setup = Setup(student_faults=_mixed_faults, teacher_faults={0: Fault(RATE_LIMIT), 2: Fault(GARBAGE)})
    optimized, result = setup.compile(num_threads=threads)
    assert {kind for _, kind in setup.student.injected} == {RATE_LIMIT, SERVER_ERROR, EMPTY, TRUNCATED, GARBAGE,
                                                              TIMEOUT}
    assert result.student_calls == setup.student.received and result.teacher_calls == setup.teacher.received
    assert result.usage.cache_hits() == 0
    assert setup.clean_score(optimized) >= setup.clean_score(dspy.ChainOfThought(SIGNATURE))


def test_budgets_cap_retried_requests_too(no_backoff):
    setup = Setup(student_faults=first_tries(3, Fault(RATE_LIMIT)), teacher_faults=every(1, Fault(RATE_LIMIT)))
    # every teacher request is rate-limited: the budget runs out before any candidate is raced, which raises
    # BudgetTooSmallError; on_failure="return" hands back the unchanged program and the spend instead
    optimized, result = setup.compile(max_student_calls=40, max_teacher_calls=2, num_threads=4, on_failure="return")
    assert setup.student.received == result.student_calls <= 40
    assert len(setup.student.injected) >= 5  # retried 429s took part of the budget ...
    retried = sum(n - 1 for n in Counter(setup.student.digests).values())
    assert retried >= len(setup.student.injected) - 4  # ... each sent again (bar those cut off by the budget)
    assert not any(m.error_kind == "exception" for m in result.mistakes)
    assert setup.teacher.received == result.teacher_calls <= 2
    assert result.stopped and "budget" in result.stopped
    assert setup.clean_score(optimized) >= setup.clean_score(dspy.ChainOfThought(SIGNATURE))


class SixCalls(dspy.Module):
    """A program that calls its predictor six times per run (an agent loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = dspy.Predict(SIGNATURE)

    def forward(self, question):
        for attempt in range(6):
            prediction = self.step(question=f"{question} (pass {attempt + 1})")
        return prediction


@pytest.mark.parametrize("threads", [8, 16])
def test_a_six_call_program_never_passes_the_student_budget(threads):
    setup = Setup()
    _, result = setup.compile(SixCalls(), max_student_calls=30, num_threads=threads, on_failure="return")
    assert setup.student.received == result.student_calls <= 30
    assert "budget" in result.stopped


@pytest.mark.parametrize("threads", [1, 4])
def test_the_callers_track_usage_sees_every_student_call(threads):
    setup = Setup()
    with dspy.track_usage() as tracker:
        _, result = setup.compile(num_threads=threads)
    assert len(tracker.usage_data["simulated/student"]) == setup.student.received == result.student_calls > 0
    assert len(tracker.usage_data["simulated/teacher"]) == setup.teacher.received


def test_a_slow_request_is_never_sent_twice():
    setup = Setup(student_faults={3: Fault(STALL, seconds=1.0), 14: Fault(STALL, seconds=1.0)})
    _, result = setup.compile(num_threads=4)
    assert {kind for _, kind in setup.student.injected} == {STALL}
    assert max(Counter(setup.student.digests).values()) == 1
    assert result.student_calls == setup.student.received


# -- 4. stop and return -----------------------------------------------------------------------------------------------
class _StopSeen(logging.Handler):
    """Sets ``event`` when the optimizer logs that a stop was requested (a signal handler ran, or a job found the stop
    file), and notes how many requests ``engine`` had received by then, and when (``at``, ``time.monotonic()``)."""

    def __init__(self, engine: FaultyEngine | None = None) -> None:
        super().__init__()
        self.event, self.engine, self.received, self.at = threading.Event(), engine, None, None

    def emit(self, record: logging.LogRecord) -> None:
        if "stop requested" in record.getMessage() and not self.event.is_set():
            self.received = self.engine.received if self.engine is not None else None
            self.at = time.monotonic()
            self.event.set()


@pytest.fixture
def stop_seen():
    """``watch(engine)``: a _StopSeen on the optimizer's logger for the test."""
    handlers = []

    def watch(engine: FaultyEngine | None = None) -> _StopSeen:
        handlers.append(_StopSeen(engine))
        logging.getLogger("dspy_concept_distill").addHandler(handlers[-1])
        return handlers[-1]

    yield watch
    for handler in handlers:
        logging.getLogger("dspy_concept_distill").removeHandler(handler)


def _reference_requests() -> tuple[int, list[str]]:
    setup = Setup()
    _, result = setup.compile(num_threads=2)
    return setup.student.received + setup.teacher.received, [r.text for r in result.accepted_rules]


def test_a_stop_file_stops_at_the_next_safe_point_and_the_run_resumes_after_it(tmp_path, stop_seen):
    total, rules = _reference_requests()
    stop_file = tmp_path / STOP_FILE

    def touch_at_30(index, prompt):
        if index == 30:
            stop_file.touch()

    setup = Setup(student_faults=touch_at_30)
    seen = stop_seen(setup.student)
    opt = setup.optimizer(num_threads=2, checkpoint_dir=str(tmp_path))
    optimized = opt.compile(dspy.ChainOfThought(SIGNATURE), trainset=setup.train, valset=setup.val)
    result = optimized.distillation
    assert result.stopped and "stop file" in result.stopped
    assert setup.student.received <= seen.received + 2  # the runs in flight finish, no new one starts
    assert all(r.evaluated_on == len(setup.val) for r in result.accepted_rules)  # only verified rules
    assert setup.clean_score(optimized) >= setup.clean_score(dspy.ChainOfThought(SIGNATURE))
    assert not stop_file.exists()  # honoured once, then removed: the next compile goes on
    again = opt.compile(dspy.ChainOfThought(SIGNATURE), trainset=setup.train, valset=setup.val).distillation
    assert again.stopped is None and [r.text for r in again.accepted_rules] == rules
    # both runs together cost one uninterrupted run, plus at most the requests in flight at the stop
    assert setup.student.received + setup.teacher.received <= total + 2


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("kind", [SIGTERM, SIGINT])
def test_sigterm_or_ctrl_c_stops_at_the_next_safe_point_and_returns_what_was_verified(signals, stop_seen, threads,
                                                                                     kind):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    setup = Setup(student_faults={30: Fault(kind)})
    seen = stop_seen(setup.student)
    optimized, result = setup.compile(num_threads=threads)
    assert result.stopped and ("SIGTERM" if kind == SIGTERM else "SIGINT") in result.stopped
    assert setup.student.received <= seen.received + threads  # the runs in flight finish, no new one starts
    assert all(r.evaluated_on == len(setup.val) for r in result.accepted_rules)
    assert setup.clean_score(optimized) >= setup.clean_score(dspy.ChainOfThought(SIGNATURE))
    assert signals == []  # the optimizer's handler took the signal
    assert {sig: signal.getsignal(sig) for sig in before} == before  # and gave the old handlers back


@pytest.mark.parametrize("kind", [SIGTERM, SIGINT])
def test_a_signal_is_handled_at_once_even_while_the_main_thread_waits_on_a_stalled_request(signals, stop_seen, kind):
    """Signals go to the main thread, which may be waiting on a slow request; the other workers must not go on
    starting new program runs meanwhile. (The student takes 20 ms a request, as a remote model does: with instant
    replies, the other workers, which have the valset baseline to run beside the trainset, would hold the GIL and
    start a dozen runs in the milliseconds the main thread needs to get it back.)"""
    sent = []

    def plan(index, prompt):
        if index == 0:
            return Fault(STALL, seconds=2.0)
        if index == 4:
            sent.append(time.monotonic())
            return Fault(kind)
        return None

    setup = Setup(student_faults=plan, student_latency=0.02)
    seen = stop_seen(setup.student)
    _, result = setup.compile(num_threads=4)
    assert result.stopped and "stopped on request" in result.stopped
    assert seen.event.is_set() and seen.at - sent[0] < 0.5  # handled at once, not when the stalled request ends
    assert seen.received <= setup.student.received_at_fault[1] + 3
    assert setup.student.received <= seen.received + 3  # then at most the runs in flight on the other workers
    assert signals == []


@pytest.mark.parametrize("threads", [1, 4])
def test_a_second_ctrl_c_interrupts(signals, stop_seen, threads):
    """The first Ctrl-C lets the program runs in flight finish; a second one, while a six-call run is still going,
    interrupts at once: the runs in flight stop at their next LM request, so the LM receives at most the requests
    already on their way. (The second is sent once the first was handled: two signals that arrive before the handler
    runs are one signal to the operating system, as two fast key presses would not be. The student takes 20 ms a
    request, as a remote model does.)"""
    seen = stop_seen()

    def plan(index, prompt):
        if index == 25:
            return Fault(SIGINT)
        if index == 27 and seen.event.wait(5):
            return Fault(SIGINT)
        return None

    setup = Setup(student_faults=plan, student_latency=0.02)
    with pytest.raises(KeyboardInterrupt):
        setup.compile(SixCalls(), num_threads=threads)
    assert [kind for _, kind in setup.student.injected] == [SIGINT, SIGINT]
    assert setup.student.received <= setup.student.received_at_fault[1] + threads  # not the runs' other calls
    assert signals == []


# -- 5. no silent failures --------------------------------------------------------------------------------------------
class AlwaysRaises(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict(SIGNATURE)

    def forward(self, question):
        self.predict(question=question)
        raise RuntimeError("tool crashed")


def test_a_program_that_raises_on_every_example_fails_before_any_teacher_call():
    setup = Setup()
    with pytest.raises(ValueError, match="program raised on every training example"):
        setup.compile(AlwaysRaises())
    assert setup.teacher.received == 0


@pytest.mark.parametrize("fault", [GARBAGE, EMPTY])
def test_a_teacher_that_fails_every_batch_says_so_in_stopped_and_in_the_summary(no_backoff, fault):
    setup = Setup(teacher_faults=every(1, Fault(fault)))
    _, result = setup.compile()
    assert setup.teacher.received > 0
    assert result.stopped and result.stopped.startswith("no usable teacher reply")
    assert "no usable teacher reply" in result.summary()
    assert result.accepted_rules == [] and result.final_score == result.baseline_score


def test_a_teacher_that_never_answers_raises_naming_it(no_backoff):
    """A teacher whose server fails every request (after the retries) never answered: nothing could be learned, and
    the error says which LM and why (tests/test_failures.py has refused keys and closed ports)."""
    setup = Setup(teacher_faults=every(1, Fault(SERVER_ERROR)))
    with pytest.raises(LMUnavailableError, match="teacher LM failed on its first requests") as caught:
        setup.compile()
    assert setup.teacher.received > 0 and caught.value.result.teacher_calls == setup.teacher.received
    assert caught.value.result.accepted_rules == []


def _teacher_writing(rules: list[dict]):
    """A scripted teacher reply function (not a real model) that always proposes ``rules``."""
    def reply(prompt, index):
        return format_reply({"analysis": {"diagnoses": ["missed a concept"], "rules": rules}},
                            json_mode=prompt.json_mode)
    return reply


def test_an_over_long_rule_is_rejected_by_its_length_in_characters():
    world = SimulatedWorld()
    huge = "Convert units " + "x" * 10_000  # three words, one of them enormous
    setup = Setup(world, teacher_reply=_teacher_writing(
        [{"predictor": "predict", "rule": huge, "mistakes": [1]},
         {"predictor": "predict", "rule": world.concepts[0].rule, "mistakes": [1]}]))
    optimized, result = setup.compile()
    long_rule = next(r for r in result.rules if r.text.startswith("Convert units x"))
    assert long_rule.status == "rejected" and "characters" in long_rule.reason
    assert len(long_rule.text) <= MAX_RULE_CHARS + 1
    assert "x" * 500 not in optimized.predict.signature.instructions
    assert world.concepts[0].rule in {r.text for r in result.accepted_rules}


def test_the_total_rule_text_of_a_predictor_is_capped():
    def long_rule(i: int) -> str:  # about 370 characters, in words no other rule shares
        return f"Apply concept phrase {i}: " + " ".join(f"step{i}word{j}" for j in range(30)) + "."

    concepts = [Concept(f"c{i}", f"concept phrase {i}", long_rule(i)) for i in range(6)]
    world = SimulatedWorld(concepts, distractors=[])
    setup = Setup(world, n=12)
    setup.train, setup.val = world.make_examples({c.name: 2 for c in concepts}), \
        world.make_examples({c.name: 2 for c in concepts})
    _, result = setup.compile(max_rules_per_batch=8, num_batches=3, max_student_calls=500)
    assert all(300 < len(c.rule) < MAX_RULE_CHARS for c in concepts)
    assert sum(len(r.text) for r in result.accepted_rules) <= MAX_RULES_CHARS_PER_PREDICTOR
    assert len(result.accepted_rules) < len(concepts)
    assert any("rule text" in r.reason for r in result.rejected_rules)


def test_a_teacher_list_over_max_rules_is_truncated_not_discarded():
    world = SimulatedWorld(distractors=[])
    rules = [{"predictor": "predict", "rule": c.rule, "mistakes": [1]} for c in world.concepts]
    setup = Setup(world, teacher_reply=_teacher_writing(rules))
    _, result = setup.compile(max_rules_per_batch=2, num_batches=1)
    assert result.replies[0].error is None and len(result.replies[0].rules) == 2
    assert [r.text for r in result.rules] == [c.rule for c in world.concepts[:2]]


def test_an_unwritable_checkpoint_dir_fails_before_any_lm_call(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    setup = Setup()
    with pytest.raises(ValueError, match="not writable"):
        setup.compile(checkpoint_dir=str(blocker / "state"))
    assert setup.student.received == setup.teacher.received == 0


def test_a_generator_trainset_and_valset_work_like_lists():
    setup = Setup()
    _, from_lists = setup.compile(num_threads=1)  # one thread: no work run ahead, so the call counts are exact
    again = Setup()
    optimized = again.optimizer(num_threads=1).compile(dspy.ChainOfThought(SIGNATURE),
                                                       trainset=(ex for ex in again.train),
                                                       valset=(ex for ex in again.val))
    assert [r.text for r in optimized.distillation.accepted_rules] == [r.text for r in from_lists.accepted_rules]
    assert again.student.received == setup.student.received


def test_a_trainset_of_the_wrong_type_fails_clearly_before_any_lm_call():
    setup = Setup()
    optimizer = setup.optimizer()
    for bad in (42, "question", setup.train[0], [setup.train[0], {"question": "Q1"}]):
        with pytest.raises((TypeError, ValueError), match="trainset"):
            optimizer.compile(dspy.ChainOfThought(SIGNATURE), trainset=bad, valset=setup.val)
    assert setup.student.received == setup.teacher.received == 0


# -- 6. no surprises --------------------------------------------------------------------------------------------------
def test_verify_keeps_its_own_state_apart_from_compile(tmp_path):
    setup = Setup()
    opt = setup.optimizer(checkpoint_dir=str(tmp_path))
    compiled = opt.compile(dspy.ChainOfThought(SIGNATURE), trainset=setup.train, valset=setup.val).distillation
    verified = opt.verify(dspy.ChainOfThought(SIGNATURE), compiled.ruleset, valset=setup.val).distillation
    assert verified.teacher_calls == 0 and len(verified.accepted_rules) == len(compiled.accepted_rules)
    paid = setup.student.received, setup.teacher.received
    again = opt.compile(dspy.ChainOfThought(SIGNATURE), trainset=setup.train, valset=setup.val).distillation
    opt.verify(dspy.ChainOfThought(SIGNATURE), compiled.ruleset, valset=setup.val)
    assert (setup.student.received, setup.teacher.received) == paid  # both resumed from their own state
    assert again.student_calls == 0 and again.final_score == compiled.final_score


def test_an_empty_rule_set_is_refused_before_any_call():
    setup = Setup()
    with pytest.raises(ValueError, match="empty"):
        setup.optimizer().verify(dspy.ChainOfThought(SIGNATURE), RuleSet(), valset=setup.val)
    assert setup.student.received == 0


def test_cache_hits_are_counted_and_shown_apart_from_paid_calls():
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    setup = Setup()
    first = setup.compile(num_threads=1)[1]  # one thread: no work run ahead, so both compiles ask for the same pairs
    paid = setup.student.received
    second = setup.compile(num_threads=1)[1]
    assert setup.student.received == paid and second.student_calls == 0  # DSPy's cache answered everything
    hits = sum(row.cache_hits for row in second.usage.rows() if row.role == "student")
    assert hits == first.student_calls > 0
    assert "cache hit" in second.summary()


NO_NETWORK_SCRIPT = r"""
import json, socket, sys
sys.path[:0] = [sys.argv[1]]
attempts = []
_create_connection, _connect = socket.create_connection, socket.socket.connect


def _outbound(address):
    host = str(address[0] if isinstance(address, tuple) else address)
    return not (host in ("localhost", "::1") or host.startswith("127."))


def create_connection(address, *args, **kwargs):
    if _outbound(address):
        attempts.append(str(address))
        raise OSError("network disabled by the test")
    return _create_connection(address, *args, **kwargs)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and _outbound(address):
        attempts.append(str(address))
        raise OSError("network disabled by the test")
    return _connect(self, address)


socket.create_connection, socket.socket.connect = create_connection, connect
import dspy
from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.testing import ScriptedTeacherEngine, SimulatedStudentEngine, SimulatedWorld

dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
world = SimulatedWorld()
train, val = world.split(8, 8)
# scripted engines behind the names of priced models, as a user's real LMs would be
student = dspy.LM("openai/gpt-4o-mini", engine=SimulatedStudentEngine(world))
teacher = dspy.LM("openai/gpt-4o", engine=ScriptedTeacherEngine(world))
dspy.configure(lm=student)
result = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
    dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation
text, page = result.summary(), result.to_html()
print(json.dumps({"attempts": attempts, "costs": [row.cost for row in result.usage.rows()],
                  "rules": len(result.accepted_rules)}))
"""


def test_compile_and_its_report_never_touch_the_network(tmp_path):
    script = tmp_path / "offline.py"
    script.write_text(NO_NETWORK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}  # no offline flag set
    child = subprocess.run([sys.executable, str(script), str(REPO)], capture_output=True, text=True, timeout=120,
                           env=env)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    assert report["rules"] == 3
    assert report["costs"] and all(cost is not None and cost > 0 for cost in report["costs"])  # bundled prices
    assert "refresh failed" not in child.stderr
