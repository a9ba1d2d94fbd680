"""The machinery of ``python -m benchmarks speed`` (not its timings): the latency-simulating scripted engines answer
as the simulated world's student does and count, time and log every request from many threads; efficiency and the
phase profile are computed as defined; one small run writes both measurements to JSON and Markdown. And the
shortcuts in the evaluator's hot path keep its behaviour: ``Outcome.to_dict`` is ``asdict``, each example is hashed
once per evaluator yet equal examples still share cached outcomes, and the progress bar ends on the true mean."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import dspy
import pytest

from benchmarks import cli
from benchmarks.harness.simulated import speculation, speed
from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.records import ErrorKind, Outcome, Step
from dspy_concept_distill.rules import RuleSet
from dspy_concept_distill.runtime import evaluator as evaluation
from dspy_concept_distill.runtime.evaluator import EvalCache, Evaluator, example_key
from dspy_concept_distill.runtime.executor import Executor, StopSignal
from dspy_concept_distill.runtime.ledger import Ledger
from dspy_concept_distill.runtime.metering import Budget
from dspy_concept_distill.runtime.metric import MetricAdapter
from dspy_concept_distill.testing import SimulatedStudentEngine, SimulatedWorld


def test_latency_engine_answers_as_the_world_and_counts_every_request_from_many_threads(world: SimulatedWorld):
    train, _ = world.split(16, 5)
    engine = speed.LatencyStudentEngine(world, latency=0.02)
    program = dspy.Predict("question -> answer: float")
    student = speed.lm("student", engine)

    def run(example: dspy.Example) -> bool:
        with dspy.context(lm=student):
            return world.metric(example, program(**example.inputs()))

    with ThreadPoolExecutor(8) as pool:
        correct = list(pool.map(run, train))
    expected = [world.stage_ok(world.example(ex.question).category, "", ["answer"]) for ex in train]
    assert correct == expected and any(correct) and not all(correct)
    assert engine.calls == len(engine.log) == len(train)
    assert engine.busy_seconds >= len(train) * 0.02  # every request slept its latency, none lost to a race
    assert 0 < engine.cpu_seconds < engine.busy_seconds
    assert {phase for phase, _, _ in engine.log} == {"other"}  # outside a compile: no phase booked
    assert all(end > start for _, start, end in engine.log)


def test_silent_teacher_proposes_no_rule(world: SimulatedWorld):
    train, val = world.split(12, 6)
    teacher = speed.silent_teacher()
    student = speed.LatencyStudentEngine(world)
    with dspy.context(lm=speed.lm("student", student)):
        result = ConceptDistillation(metric=world.metric, teacher_lm=speed.lm("teacher", teacher)).compile(
            dspy.Predict("question -> answer: float"), trainset=train, valset=val).distillation
    assert teacher.calls >= 1 and result.rules == []
    assert student.calls == len(train) + len(val)  # the trainset run and the valset baseline, nothing raced


def test_efficiency_is_lm_time_per_thread_over_wall_time():
    assert speed.efficiency(40 * 0.05, 4, 1.0) == pytest.approx(0.5)
    assert speed.efficiency(40 * 0.05, 1, 2.0) == pytest.approx(1.0)
    assert speed.efficiency(1.0, 4, 0.0) == 0.0


def test_critical_path_splits_wall_time_into_waves_and_fixed_time():
    first = {"threads": 4, "wall_s": 2.0, "student_requests": 40}
    second = {"threads": 4, "wall_s": 6.0, "student_requests": 40}
    found = speed.critical_path(first, second, (0.05, 0.25))
    assert found["waves"] == pytest.approx(20.0) and found["fixed_s"] == pytest.approx(1.0)
    assert found["ideal_waves"] == pytest.approx(10.0) and found["structural_efficiency"] == pytest.approx(0.5)


def test_phase_profile_merges_consecutive_requests_of_a_phase_and_counts_idle_threads():
    log = [("b", 12.0, 13.0), ("a", 10.0, 11.0), ("a", 10.5, 11.5), ("a", 13.5, 14.0)]
    stretches = speed.phase_profile(log, start=10.0, threads=2)
    assert [(s["phase"], s["requests"]) for s in stretches] == [("a", 2), ("b", 1), ("a", 1)]
    first = stretches[0]
    assert first["from_s"] == 0.0 and first["span_s"] == 1.5
    assert first["in_flight"] == pytest.approx(2 / 1.5, abs=0.01)
    assert first["idle_thread_s"] == pytest.approx(1.5 * 2 - 2.0)
    assert stretches[1]["idle_thread_s"] == pytest.approx(1.0)


def written_by(module, monkeypatch) -> dict:
    """What the command hands to ``module.write`` (the report it writes), kept while it is written."""
    kept, write = {}, module.write
    monkeypatch.setattr(module, "write", lambda report, out: kept.update(report=report) or write(report, out))
    return kept


def test_one_small_run_writes_both_measurements(tmp_path, capsys, monkeypatch):
    out = tmp_path / "speed"
    written = written_by(speed, monkeypatch)
    assert cli.main(["speed", "--train", "12", "--val", "6", "--repeats", "2", "--threads", "1,2", "--latency",
                     "0.002", "--parallel-train", "10", "--parallel-val", "10", "--structure-latency", "0.004",
                     "--family-tasks", "today", "--family-presets", "cd-light", "--family-seeds", "0",
                     "--family-threads", "8", "--family-sigmas", "0,0.5", "--out", str(out)]) == 0
    report = written["report"]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["command"].startswith("python -m benchmarks speed --train 12")
    assert saved["revision"] and saved["versions"]["dspy"].startswith("3.4")

    overhead = saved["overhead"]
    compiled, evaluated = overhead["compile"], overhead["evaluate"]
    assert compiled["student_requests"] == 12 + 6 and evaluated["requests"] == 12 + 6
    assert compiled["requests"] == compiled["student_requests"] + compiled["teacher_requests"]
    assert len(compiled["all"]) == len(evaluated["all"]) == 2
    assert compiled["cpu_overhead_ms_per_call"] == min(r["cpu_overhead_ms_per_call"] for r in compiled["all"])
    assert math.isclose(overhead["extra_ms_per_call"],
                        compiled["overhead_ms_per_call"] - evaluated["overhead_ms_per_call"])

    runs = saved["parallel"]
    assert [r["threads"] for r in runs] == [1, 2]
    for run in runs:
        work = run["student_requests"] * 0.002 + run["teacher_requests"] * 0.0
        assert run["efficiency"] == pytest.approx(speed.efficiency(work, run["threads"], run["wall_s"]))
        assert sum(s["requests"] for s in run["phases"]) == run["student_requests"] + run["teacher_requests"]
        assert {s["phase"] for s in run["phases"]} >= {"mistakes", "verification", "induction"}
    assert runs[0]["accepted"] == runs[1]["accepted"] and runs[0]["accepted"]
    assert runs[0]["net_efficiency"] == pytest.approx(runs[0]["efficiency"])  # the 1-thread run is the reference
    useful = runs[0]["student_requests"] * 0.002
    assert runs[1]["net_efficiency"] == pytest.approx(speed.efficiency(useful, 2, runs[1]["wall_s"]))

    (structure,) = saved["structure"]["runs"]  # the 1-thread run is not repeated
    assert structure["threads"] == 2 and structure["second_run"]["threads"] == 2
    assert structure["waves"] == pytest.approx((structure["second_run"]["wall_s"] - runs[1]["wall_s"]) / 0.002)

    family = saved["family"]
    assert [(r["task"], r["sigma"], r["threads"]) for r in family["runs"]] == [("today", 0.0, 8), ("today", 0.5, 8)]
    for run in family["runs"]:
        assert run["requests"] >= run["requests_1_thread"] > 0
        assert run["lm_s"] == pytest.approx(run["requests"] * 0.002, rel=0.5 if run["sigma"] else 1e-6)
        assert run["efficiency"] == pytest.approx(speed.efficiency(run["lm_s"], 8, run["wall_s"]))
        assert run["net_efficiency"] == pytest.approx(run["efficiency"] * run["requests_1_thread"] / run["requests"])
    assert [r["runs"] for r in family["summary"]] == [1, 1]

    text = out.with_suffix(".md").read_text()
    assert saved["command"] in text and "efficiency" in text and "Accepted rules identical" in text
    assert "c. Parallel efficiency across the task family" in text
    assert text in capsys.readouterr().out


# -- evaluation.py's hot path keeps its behaviour -----------------------------------------------------------------
def make_evaluator(world: SimulatedWorld) -> tuple[Evaluator, SimulatedStudentEngine]:
    program = dspy.Predict("question -> answer: float")
    engine = SimulatedStudentEngine(world)
    dspy.configure(lm=dspy.LM("simulated/student", engine=engine))
    evaluator = Evaluator(program, {"self": program.signature.instructions}, MetricAdapter(world.metric),
                          Budget(Ledger(), None, None), Executor(1), StopSignal(), EvalCache())
    return evaluator, engine


def test_outcome_to_dict_is_asdict_and_shares_no_container():
    outcome = Outcome(score=0.5, feedback="f", steps=[Step("p", {"q": "x", "l": [1, {"a": None}]}, {"answer": 4.0})],
                      error="e", error_kind=ErrorKind.PARSE, raw_text="r", failed_predictor="p", calls=2)
    data = outcome.to_dict()
    assert data == asdict(outcome) and list(data) == list(asdict(outcome))
    assert data["error_kind"] is ErrorKind.PARSE
    data["steps"][0]["inputs"]["l"][1]["a"] = "changed"
    data["steps"].append({})
    assert outcome.steps == [Step("p", {"q": "x", "l": [1, {"a": None}]}, {"answer": 4.0})]
    assert Outcome.from_dict(outcome.to_dict()) == outcome


def test_evaluator_hashes_each_example_once_and_still_finds_equal_examples(world: SimulatedWorld, monkeypatch):
    evaluator, engine = make_evaluator(world)
    train, _ = world.split(6, 5)
    hashed = []
    monkeypatch.setattr(evaluation, "example_key", lambda ex: hashed.append(ex) or example_key(ex))
    first = evaluator.run([(RuleSet(), ex) for ex in train], phase="mistakes")
    again = evaluator.run([(RuleSet(), ex) for ex in train + train], phase="mistakes")
    assert len(hashed) == len(train) and engine.calls == len(train)  # one hash and one run per example
    assert again == first + first
    assert [evaluator.example_key_of(ex) for ex in train] == [example_key(ex) for ex in train]
    copies = [dspy.Example(**ex.toDict()).with_inputs("question") for ex in train]  # equal content, new objects
    assert evaluator.run([(RuleSet(), ex) for ex in copies], phase="mistakes") == first
    assert engine.calls == len(train) and len(evaluator.cache) == len(train)  # the copies were cache hits


def test_progress_shows_the_final_mean_and_is_refreshed_about_a_hundred_times(world: SimulatedWorld, monkeypatch):
    evaluator, _ = make_evaluator(world)
    train, _ = world.split(250, 5)
    bars = []

    class Recorder:
        def __init__(self, total: int, desc: str | None = None) -> None:
            self.total, self.n, self.postfixes = total, 0, []
            bars.append(self)

        def update(self, n: int = 1) -> None:
            self.n += n

        def set_postfix(self, **values: str) -> None:
            self.postfixes.append(values)

        def close(self) -> None:
            pass

    monkeypatch.setattr(evaluation, "progress", Recorder)
    outcomes = evaluator.run([(RuleSet(), ex) for ex in train], phase="mistakes", desc="trainset")
    (bar,) = bars
    assert bar.n == bar.total == len(train)
    assert bar.postfixes[-1] == {"score": f"{sum(o.score for o in outcomes) / len(outcomes):.3f}"}
    assert len(bar.postfixes) <= 101


def test_the_speculation_benchmark_counts_extra_requests_and_checks_decisions(tmp_path, capsys, monkeypatch):
    out = tmp_path / "spec"
    written = written_by(speculation, monkeypatch)
    assert cli.main(["speculation", "--tasks", "today-noisy", "--presets", "cd-medium", "--seeds", "0-1", "--threads",
                     "1,16", "--out", str(out)]) == 0
    payload = written["report"]
    saved = json.loads((tmp_path / "spec.json").read_text())
    assert saved["meta"]["command"].startswith("python -m benchmarks speculation --tasks today-noisy")
    runs = {(r["seed"], r["threads"]): r for r in saved["runs"]}
    (row,) = payload["summary"]
    extra = [runs[(s, 16)]["student_calls"] - runs[(s, 1)]["student_calls"] for s in (0, 1)]
    assert row["extra_mean"] == pytest.approx(sum(extra) / 2) and row["extra_max"] == max(extra)
    assert min(extra) >= 0 and row["runs"] == 2
    same = sum(speculation.decisions(runs[(s, 1)]) == speculation.decisions(runs[(s, 16)]) for s in (0, 1))
    assert row["same_decisions"] == same == 2  # decisions never depend on the thread count
    assert "| today-noisy | cd-medium | 16 |" in (tmp_path / "spec.md").read_text()
