"""Crash-safe resume. A compile SIGKILLed at any point (by the fault-injecting engine itself, at request N) and then
resumed repeats no request except those in flight, and ends with the same rules and score as an uninterrupted run.
A state file of the wrong shape is ignored with a warning, a torn last line is skipped, and a checkpoint from another
setup (metric code, student engine, field types, ...) is not reused."""

from __future__ import annotations

import functools
import json
import logging
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.persistence.fingerprint import fingerprint
from dspy_concept_distill.persistence.journal import Journal, Resumed
from dspy_concept_distill.records import BatchReply, Outcome, Proposal, Step
from dspy_concept_distill.testing import ScriptedTeacherEngine, SimulatedStudentEngine, SimulatedWorld
from dspy_concept_distill.testing.faults import FaultyEngine
from tests.helpers import REPO

SIGNATURE = "question -> answer: float"
THREADS = 2
N = 10  # training and validation examples: requests 0-9 run the trainset, 10-19 the baseline, 20-22 the teacher
# (three teacher batches), then racing
STATE = "compile_state.jsonl"

# The same world, data and LMs in the child process and here: SimulatedWorld() draws its examples from seed 0.
CRASH_TEMPLATE = """
import sys
sys.path[:0] = [sys.argv[1]]
import dspy
from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.testing import ScriptedTeacherEngine, SimulatedStudentEngine, SimulatedWorld
from dspy_concept_distill.testing.faults import KILL, Fault, FaultyEngine, RequestCounter

kill_at, checkpoint_dir, log = int(sys.argv[2]), sys.argv[3], sys.argv[4]
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
world = SimulatedWorld()
train, val = world.split(%N, %N)
counter = RequestCounter()
plan = lambda index, prompt: Fault(KILL) if index == kill_at else None
student = dspy.LM("simulated/student", engine=FaultyEngine(SimulatedStudentEngine(world), faults=plan,
                                                           counter=counter, log_path=log, latency=%L))
teacher = dspy.LM("simulated/teacher", engine=FaultyEngine(ScriptedTeacherEngine(world), faults=plan,
                                                           counter=counter, log_path=log))
dspy.configure(lm=student)
ConceptDistillation(metric=world.metric, teacher_lm=teacher, num_threads=%d, num_batches=3,
                    checkpoint_dir=checkpoint_dir%P).compile(
    dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
print("finished without being killed")
"""
CRASH_SCRIPT = (CRASH_TEMPLATE.replace("%d", str(THREADS)).replace("%N", str(N)).replace("%L", "0.0")
                .replace("%P", ""))


class Run:
    """One compile of the standard task with fault-injecting engines in front of the scripted LMs."""

    def __init__(self, checkpoint_dir: Path | None, world: SimulatedWorld | None = None, *, metric=None,
                 student_engine=None, signature: str = SIGNATURE, latency: float = 0.0, **params) -> None:
        self.world = world or SimulatedWorld()
        self.train, self.val = self.world.split(N, N)
        self.student = FaultyEngine(student_engine or SimulatedStudentEngine(self.world), latency=latency)
        self.teacher = FaultyEngine(ScriptedTeacherEngine(self.world))
        dspy.configure(lm=dspy.LM("simulated/student", engine=self.student))
        self.optimizer = ConceptDistillation(
            metric=metric or self.world.metric, teacher_lm=dspy.LM("simulated/teacher", engine=self.teacher),
            num_threads=params.pop("num_threads", THREADS), num_batches=params.pop("num_batches", 3),
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, **params)
        self.signature = signature

    def compile(self):
        self.result = self.optimizer.compile(dspy.ChainOfThought(self.signature), trainset=self.train,
                                             valset=self.val).distillation
        return self.result

    @property
    def digests(self) -> Counter:
        return Counter(self.student.digests + self.teacher.digests)

    @property
    def requests(self) -> int:
        return self.student.received + self.teacher.received


def accepted(result) -> list[str]:
    return [r.text for r in result.accepted_rules]


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted run without checkpoints (DSPy's caches off and its settings restored, as conftest does)."""
    saved_cache, saved_settings = dspy.cache, dict(dspy.settings.config)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    try:
        run = Run(None)
        run.compile()
    finally:
        dspy.cache = saved_cache
        dspy.configure(**saved_settings)
    return run


# -- SIGKILL and resume -----------------------------------------------------------------------------------------------
KILL_POINTS = {"mistakes": 4, "baseline": 14, "teacher": 21, "racing": 40}


def test_a_compile_killed_at_any_point_resumes_without_paying_twice(tmp_path, reference, caplog):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    children = {  # killed by their own engine at request kill_at (0-based), all at once to save time
        name: subprocess.Popen([sys.executable, str(script), str(REPO), str(kill_at), str(tmp_path / name),
                                str(tmp_path / f"{name}.log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        for name, kill_at in KILL_POINTS.items()}
    for name, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, f"{name}: {out}{err[-2000:]}"
    for name, kill_at in KILL_POINTS.items():
        killed = Counter((tmp_path / f"{name}.log").read_text().split())
        assert sum(killed.values()) >= kill_at + 1, name
        resumed = Run(tmp_path / name)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
            result = resumed.compile()
        repeated = sum((killed & resumed.digests).values())
        assert repeated <= THREADS * 1, name  # only the requests in flight: one LM call per program run here
        assert sum(killed.values()) + resumed.requests - repeated == reference.requests, name
        assert accepted(result) == accepted(reference.result), name
        assert result.final_score == reference.result.final_score and result.stopped is None, name
        assert "resuming from" in caplog.text, name


def test_a_compile_racing_ahead_on_16_threads_killed_mid_race_resumes_without_paying_twice(tmp_path):
    """At 16 threads the racer races ahead (speculative chunks, the next round's trainset): the requests it makes
    depend only on outcomes, so the killed run plus the resumed one still make exactly the uninterrupted run's."""
    threads, latency = 16, 0.02  # a slow student: jobs are still running when the racer plans
    saved_cache, saved_settings = dspy.cache, dict(dspy.settings.config)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    try:
        reference = Run(None, num_threads=threads, latency=latency, auto="medium")
        reference.compile()
    finally:
        dspy.cache = saved_cache
        dspy.configure(**saved_settings)
    script = tmp_path / "crash16.py"
    script.write_text(CRASH_TEMPLATE.replace("%d", str(threads)).replace("%N", str(N)).replace("%L", str(latency))
                      .replace("%P", ", auto='medium'"))
    kill_at = 30  # racing: the trainset, baseline and teacher are requests 0-22
    child = subprocess.run([sys.executable, str(script), str(REPO), str(kill_at), str(tmp_path / "run"),
                            str(tmp_path / "run.log")], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr[-2000:]
    killed = Counter((tmp_path / "run.log").read_text().split())
    resumed = Run(tmp_path / "run", num_threads=threads, latency=latency, auto="medium")
    result = resumed.compile()
    repeated = sum((killed & resumed.digests).values())
    assert repeated <= threads  # only the requests in flight: one LM call per program run here
    assert sum(killed.values()) + resumed.requests - repeated == reference.requests
    assert accepted(result) == accepted(reference.result)
    assert result.final_score == reference.result.final_score and result.stopped is None


def test_an_unchanged_setup_resumes_everything_and_says_so(tmp_path, caplog):
    first = Run(tmp_path).compile()
    again = Run(tmp_path)
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        result = again.compile()
    assert again.requests == 0 and result.student_calls == result.teacher_calls == 0
    assert accepted(result) == accepted(first) and len(accepted(first)) == 3
    assert re.search(r"resuming from .*: \d+ scored runs and 3 teacher replies \(rounds \[1\]\) will not be paid",
                     caplog.text)


def test_a_torn_last_line_is_skipped_and_later_records_still_land(tmp_path, reference):
    Run(tmp_path).compile()
    path = tmp_path / STATE
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    path.write_text(text[: len(text) - len(last) // 2 - 1])  # the process died half-way through its last record
    second = Run(tmp_path)
    assert accepted(second.compile()) == accepted(reference.result)
    assert second.requests == 1  # the torn record's request, nothing else
    third = Run(tmp_path)
    third.compile()
    assert third.requests == 0  # the record written after the torn line was read back


# -- state files of the wrong shape ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b'{"a": 1}\n', b"[1, 2, 3]\nnull\n", b'{"type": "header", "version": 999, "fingerprint": "x"}\n',
    b"\xff\xfe\x00 not utf-8 \x81\n",
], ids=["object", "list", "other-version", "binary"])
def test_a_state_file_of_the_wrong_shape_is_ignored_with_a_warning(tmp_path, reference, caplog, content):
    (tmp_path / STATE).write_bytes(content)
    run = Run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill"):
        result = run.compile()
    assert accepted(result) == accepted(reference.result) and run.requests == reference.requests
    assert "ignoring" in caplog.text and STATE in caplog.text


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_reply_and_an_outcome_come_back_from_the_journal_as_the_records_they_were(tmp_path):
    reply = BatchReply(round=1, batch=2, mistake_ids=["1-a", "1-b"], diagnoses=["d"], attempts=1,
                       rules=[Proposal("plan", "Convert every quantity to one unit first.", (1, 2)),
                              Proposal("", "Subtract what was given away.")])
    outcome = Outcome(score=0.5, steps=[Step("plan", {"question": "Q?"}, {"plan": "add"})], calls=1)
    journal = Journal(tmp_path, "state", "fp")
    journal.open(Resumed())
    journal.reply(reply)
    journal.outcome(("variant", "example"), outcome)
    journal.close()
    _header, saved_reply, saved_outcome = _records(tmp_path / "state.jsonl")
    # on disk, a proposal keeps the teacher's reply shape and a step its dict: journals of earlier versions read alike
    assert saved_reply["rules"] == [{"predictor": "plan", "rule": "Convert every quantity to one unit first.",
                                     "mistakes": [1, 2]},
                                    {"predictor": "", "rule": "Subtract what was given away.", "mistakes": []}]
    assert saved_outcome["outcome"]["steps"] == [{"predictor": "plan", "inputs": {"question": "Q?"},
                                                  "outputs": {"plan": "add"}}]
    resumed = Journal(tmp_path, "state", "fp").load()
    assert resumed.replies == {(1, 2): reply}
    assert [Outcome.from_dict(r["outcome"]) for r in resumed.outcomes] == [outcome]


REPLY_DAMAGE = [("rules", "not a list of rules"), ("rules", ["a bare string, not a rule object"]), ("round", "zero")]
OUTCOME_DAMAGE = [("steps", "not a list of steps"), ("score", float("nan")), ("error_kind", "no such kind"),
                  ("feedback", {"not": "text"})]


def test_a_malformed_record_in_a_matching_journal_is_skipped_with_a_warning(tmp_path, reference, caplog):
    Run(tmp_path).compile()
    path = tmp_path / STATE
    records = _records(path)
    replies = [r for r in records if r["type"] == "reply"]
    outcomes = [r for r in records if r["type"] == "outcome"]
    assert len(replies) == len(REPLY_DAMAGE)
    for record, (name, value) in zip(replies, REPLY_DAMAGE, strict=True):
        record[name] = value
    for record, (name, value) in zip(outcomes[::7], OUTCOME_DAMAGE, strict=False):
        record["outcome"][name] = value
    lines = [json.dumps(r) for r in records] + ['{"type": "outcome"}', '{"type": "reply", "round": 0}', "[1]", "null"]
    path.write_text("\n".join([*lines[:3], "{garbage", *lines[3:]]) + "\n")
    run = Run(tmp_path)
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill"):
        result = run.compile()  # no raw exception from any of them
    assert accepted(result) == accepted(reference.result) and result.final_score == reference.result.final_score
    # only the damaged records are paid for again
    assert (run.teacher.received, run.student.received) == (len(REPLY_DAMAGE), len(OUTCOME_DAMAGE))
    malformed = [r.getMessage() for r in caplog.records if "malformed record" in r.getMessage()]
    assert len(malformed) == 1  # one kind of warning, one line with a count
    assert malformed[0].endswith(f"[{len(REPLY_DAMAGE) + len(OUTCOME_DAMAGE) + 2} times]")
    assert "unreadable line 4" in caplog.text


# -- stale checkpoints ------------------------------------------------------------------------------------------------
def _metric_v1():
    def metric(example, prediction, trace=None):
        return SimulatedWorld.metric(example, prediction)
    return metric


def _metric_v2():
    def metric(example, prediction, trace=None):
        return 1.0 if SimulatedWorld.metric(example, prediction) else 0.0
    return metric


STALE_CASES = {  # (first run, second run, the part the warning names)
    "metric-code": ({"metric": _metric_v1()}, {"metric": _metric_v2()}, "metric"),
    "student-engine": ({}, {"student_engine": "other class"}, "student"),
    "student-settings": ({}, {"student_engine": "other settings"}, "student"),
    "field-type": ({}, {"signature": "question -> answer: int"}, "program"),
}


def _second(spec: dict) -> dict:
    """A different student engine behind the same model string: another class, or the same class with other settings
    (a noisier simulated student, on the same examples)."""
    engine = spec.get("student_engine")
    if engine == "other class":
        return {**spec, "student_engine": FaultyEngine(SimulatedStudentEngine(SimulatedWorld()))}
    if engine == "other settings":
        return {**spec, "student_engine": SimulatedStudentEngine(SimulatedWorld(flip_rate=0.5))}
    return spec


@pytest.mark.parametrize("case", list(STALE_CASES))
def test_a_checkpoint_from_another_setup_is_not_reused(tmp_path, caplog, case):
    first, second, part = STALE_CASES[case]
    Run(tmp_path, **first).compile()
    stale = Run(tmp_path, **_second(second))
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill"):
        result = stale.compile()
    assert stale.student.received >= 2 * N and result.student_calls == stale.student.received  # nothing reused
    assert "ignoring checkpoint" in caplog.text and f"changed: {part})" in caplog.text


# -- the fingerprint, part by part ------------------------------------------------------------------------------------
def _init_step(self) -> None:
    dspy.Module.__init__(self)
    self.step = dspy.Predict(SIGNATURE)


def _forward_once(self, question):
    return self.step(question=question)


def _forward_twice(self, question):
    self.step(question=question)
    return self.step(question=question + " (again)")


def _forward_passes(passes: int):
    def forward(self, question):
        for attempt in range(passes):
            prediction = self.step(question=f"{question} (pass {attempt + 1})")
        return prediction
    return forward


def _program(forward) -> dspy.Module:
    """An instance of a class named ``Program`` (the same name and module every time) with this ``forward``."""
    return type("Program", (dspy.Module,), {"__init__": _init_step, "forward": forward})()


def _fp(program=None, metric=None, teacher=None, **params) -> str:
    world = SimulatedWorld()
    train, val = world.split(6, 6)
    program = program or dspy.Predict(SIGNATURE)
    base = {n: p.signature.instructions for n, p in program.named_predictors()}
    return fingerprint(program, base, train, val, metric or world.metric, teacher or world.teacher_lm(),
                       {"seed": 0, **params})


def _with_threshold(threshold):
    def metric(example, prediction, trace=None):
        return float(abs(float(prediction.answer) - float(example.answer)) <= threshold)
    return metric


def _scaled(scale, example, prediction, trace=None):
    return scale * SimulatedWorld.metric(example, prediction)


def _demos(program):
    program.demos = [dspy.Example(question="Q0: 1 + 1?", answer=2)]
    return program


@pytest.mark.parametrize("change", [
    lambda: _fp(metric=_with_threshold(0.5)),  # a closure's captured value
    lambda: _fp(metric=functools.partial(_scaled, 2.0)),  # a partial's argument
    lambda: _fp(teacher=SimulatedWorld().teacher_lm(temperature=0.7)),  # the teacher's settings
    lambda: _fp(program=_demos(dspy.Predict(SIGNATURE))),  # demos in the prompt
    lambda: _fp(program=dspy.Predict(dspy.Signature(SIGNATURE).with_updated_fields(
        "answer", desc="the total, a number"))),  # a field description
    lambda: _fp(program=_program(_forward_twice)),  # the program's own code
    lambda: _fp(program=_program(_forward_passes(3))),  # a value the program's code captured
    lambda: _fp(seed=1),  # a setting that shapes the run
], ids=["closure", "partial", "teacher", "demos", "field-desc", "program-code", "program-closure", "seed"])
def test_the_fingerprint_changes_with_anything_that_changes_a_reply_or_a_decision(change):
    dspy.configure(lm=SimulatedWorld().student_lm())
    base = {"closure": _fp(metric=_with_threshold(0.0)), "partial": _fp(metric=functools.partial(_scaled, 1.0))}
    programs = {_fp(program=_program(_forward_once)), _fp(program=_program(_forward_passes(2)))}
    assert change() not in {_fp(), *programs, *base.values()}


def test_the_fingerprint_ignores_what_cannot_change_a_result():
    dspy.configure(lm=SimulatedWorld().student_lm())
    assert _fp() == _fp()  # stable, and blind to engine call counters
    assert _fp(num_threads=1) == _fp(num_threads=8)
    assert _fp(max_student_calls=10, max_teacher_calls=1) == _fp(max_student_calls=500, max_teacher_calls=9)


def test_the_adapter_is_part_of_the_fingerprint():
    dspy.configure(lm=SimulatedWorld().student_lm())
    chat = _fp()
    with dspy.context(adapter=dspy.JSONAdapter()):
        assert _fp() != chat


def test_an_unwritable_directory_fails_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not writable"):
        Journal(blocker / "sub", "compile_state", "fp").check_writable()


def test_a_teacher_batch_that_never_parsed_is_not_asked_again_on_resume(tmp_path):
    # Batch 0's two attempts (each with DSPy's JSON fallback) get unparseable replies: a property of the reply,
    # so the failure is journaled and a resume does not pay for it again. (A transport failure would be retried.)
    world = SimulatedWorld(bad_teacher_calls=[0, 1, 2, 3])
    train, val = world.split(20, 20)
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)

    def run():
        return ConceptDistillation(metric=world.metric, teacher_lm=teacher, num_threads=1,
                                   checkpoint_dir=str(tmp_path)).compile(
            dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation

    first = run()
    assert first.replies[0].error is not None
    asked = teacher.engine.calls
    second = run()
    assert teacher.engine.calls == asked  # nothing asked again, the failed batch included
    assert second.replies[0].error == first.replies[0].error
    assert [r.text for r in second.accepted_rules] == [r.text for r in first.accepted_rules]


def test_a_stop_file_is_removed_once_it_stopped_a_run(tmp_path):
    world = SimulatedWorld()
    train, val = world.split(20, 20)
    dspy.configure(lm=world.student_lm())
    (tmp_path / "STOP").write_text("")
    result = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(),
                                 checkpoint_dir=str(tmp_path)).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation
    assert "stop file" in result.stopped
    assert not (tmp_path / "STOP").exists()
