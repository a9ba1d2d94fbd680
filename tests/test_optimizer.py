"""End-to-end behaviour of ConceptDistillation in the simulated world (scripted student and teacher engines
behind real dspy.LM objects): what it accepts and rejects, where rules land, what it costs."""

import logging

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation, DistillationResult, RuleSet
from dspy_concept_distill.phases.induction import render_mistake
from dspy_concept_distill.testing import (
    PLAIN,
    Concept,
    Distractor,
    SimulatedWorld,
    assert_verified,
    default_distractors,
)


class TwoStep(dspy.Module):
    def __init__(self):
        super().__init__()
        self.plan = dspy.Predict("question -> plan")
        self.solve = dspy.ChainOfThought("question, plan -> answer: float")

    def forward(self, question):
        plan = self.plan(question=question).plan
        return self.solve(question=question, plan=plan)


class Outer(dspy.Module):
    """Nested modules: predictor names come out as 'inner.step.predict'."""

    def __init__(self):
        super().__init__()
        self.inner = dspy.Module()
        self.inner.step = dspy.ChainOfThought("question -> answer: float")

    def forward(self, question):
        return self.inner.step(question=question)


def setup(world: SimulatedWorld, n_train=20, n_val=20):
    train, val = world.split(n_train, n_val)
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)
    return train, val, student, teacher


def concepts_in(world: SimulatedWorld, texts) -> list[str]:
    """The concepts whose phrase some text holds (a rule or its paraphrase: later teacher batches are sampled)."""
    return sorted(c.name for c in world.concepts if any(c.phrase.lower() in t.lower() for t in texts))


def worst_first() -> SimulatedWorld:
    """A world whose teacher proposes a harmful and a tempting rule before the helpful ones, so verification races
    rules it must reject first: a check of its verdicts then fails when the acceptance rule is broken (the
    fallback to the starting instructions hides that from ``final_score >= baseline_score``)."""
    return SimulatedWorld(distractors=default_distractors()[:2], distractors_first=True)


def independent_score(program, valset, metric) -> float:
    return dspy.Evaluate(devset=valset, metric=metric, num_threads=1, display_progress=False)(program).score / 100


def test_accepts_helpful_rejects_harmful_and_neutral_and_merges_duplicates(world):
    train, val, _, teacher = setup(world)
    program = dspy.ChainOfThought("question -> answer: float")
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, num_threads=4,
                                    max_rules_per_batch=8).compile(program, trainset=train, valset=val)
    result = optimized.distillation
    assert isinstance(result, DistillationResult)
    accepted = [r.text for r in result.accepted_rules]
    assert len(accepted) == 3 and concepts_in(world, accepted) == ["groups", "leftover", "units"]
    rejected = {r.text for r in result.rejected_rules}
    assert set(world.harmful_rules) <= rejected and set(world.neutral_rules) <= rejected
    merged = [r for r in result.rules if "near-duplicate" in r.reason]
    assert merged and all(r.status == "rejected" for r in merged)
    assert sum(len(r.duplicates) for r in result.accepted_rules) == len(merged)
    assert result.baseline_score == pytest.approx(0.4) and result.final_score == pytest.approx(1.0)
    instructions = optimized.predict.signature.instructions
    assert all(rule in instructions for rule in accepted)
    assert not any(rule in instructions for rule in world.harmful_rules + world.neutral_rules)
    # the reported score is what an independent dspy.Evaluate measures on the returned program
    assert independent_score(optimized, val, world.metric) == pytest.approx(result.final_score)


def test_light_preset_costs_fewer_student_calls_than_the_cheapest_dspy_optimizer(world):
    train, val, student, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, auto="light").compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    result = optimized.distillation
    accepted = [r.text for r in result.accepted_rules]
    assert len(accepted) == 3 and concepts_in(world, accepted) == ["groups", "leftover", "units"]
    assert result.student_calls == student.engine.calls  # the ledger counts every call that reached the model
    assert student.engine.calls <= 120  # 0.75 x COPRO (breadth 4, depth 2), which spends 160 on this 20/20 task
    assert result.teacher_calls == teacher.engine.calls <= 5


def test_the_callers_program_is_never_changed(world):
    train, val, _, teacher = setup(world)
    program = TwoStep()
    before = {name: (p.signature, p.signature.instructions, p.demos) for name, p in program.named_predictors()}
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        program, trainset=train, valset=val)
    for name, predictor in program.named_predictors():
        signature, instructions, demos = before[name]
        assert predictor.signature is signature
        assert predictor.signature.instructions == instructions
        assert predictor.demos is demos
    assert optimized is not program
    assert dict(optimized.named_predictors())["plan"] is not dict(program.named_predictors())["plan"]


def test_rules_reach_the_right_predictor_of_a_two_predictor_program():
    concepts = [
        Concept("units", "same unit", "When planning, convert every quantity to the same unit first.", field="plan"),
        Concept("format", "report only the final number", "Report only the final number as the answer.",
                field="answer"),
    ]
    world = SimulatedWorld(concepts, distractors=[])
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        TwoStep(), trainset=train, valset=val)
    predictors = dict(optimized.named_predictors())
    assert concepts[0].rule in predictors["plan"].signature.instructions
    assert concepts[0].rule not in predictors["solve.predict"].signature.instructions
    assert concepts[1].rule in predictors["solve.predict"].signature.instructions
    assert concepts[1].rule not in predictors["plan"].signature.instructions
    assert {r.predictor for r in optimized.distillation.accepted_rules} == {"plan", "solve.predict"}
    assert optimized.distillation.final_score == pytest.approx(1.0)


def test_nested_modules_are_optimized_by_their_full_predictor_name(world):
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        Outer(), trainset=train, valset=val)
    assert {r.predictor for r in optimized.distillation.accepted_rules} == {"inner.step.predict"}
    assert optimized.distillation.final_score == pytest.approx(1.0)


def test_parse_failures_become_mistakes_with_the_raw_text_and_can_be_fixed():
    world = SimulatedWorld(parse_failure_categories=["units"])
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    parse = [m for m in optimized.distillation.mistakes if m.error_kind == "parse"]
    assert parse and all("I think it is around" in m.raw_text for m in parse)
    assert all(m.failed_predictor == "predict" for m in parse)
    shown = render_mistake(parse[0], 1)
    assert "could not be parsed" in shown and parse[0].raw_text[:20] in shown
    assert world.concepts[0].rule in {r.text for r in optimized.distillation.accepted_rules}


def test_program_exceptions_become_mistakes():
    world = SimulatedWorld()
    train, val, _, teacher = setup(world)
    crash_on = train[0].question

    class Fragile(dspy.Module):
        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("question -> answer: float")

        def forward(self, question):
            if question == crash_on:
                raise RuntimeError("tool crashed")
            return self.predict(question=question)

    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        Fragile(), trainset=train, valset=val)
    crashed = [m for m in optimized.distillation.mistakes if m.error_kind == "exception"]
    assert [(m.inputs["question"], m.error) for m in crashed] == [(crash_on, "RuntimeError: tool crashed")]
    assert "The program raised: RuntimeError: tool crashed" in render_mistake(crashed[0], 1)


@pytest.mark.parametrize("arity", [2, 3, 5])
def test_metrics_with_two_three_or_five_arguments(world, arity):
    train, val, _, teacher = setup(world)
    calls = []

    def two(example, prediction):
        calls.append(2)
        return world.metric(example, prediction)

    def three(example, prediction, trace=None):
        calls.append(3)
        return world.metric(example, prediction)

    def five(gold, pred, trace=None, pred_name=None, pred_trace=None):
        calls.append(5)
        ok = world.metric(gold, pred)
        return dspy.Prediction(score=float(ok), feedback="correct" if ok else f"expected {gold.answer}")

    metric = {2: two, 3: three, 5: five}[arity]
    optimized = ConceptDistillation(metric=metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    assert set(calls) == {arity}
    assert optimized.distillation.final_score == pytest.approx(1.0)
    if arity == 5:
        assert all(m.feedback.startswith("expected ") for m in optimized.distillation.mistakes)
        assert "Metric feedback: expected" in render_mistake(optimized.distillation.mistakes[0], 1)


def test_feedback_reaches_the_teacher_prompt(world):
    train, val, _, teacher = setup(world)

    def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        ok = world.metric(gold, pred)
        return dspy.Prediction(score=float(ok), feedback="FEEDBACK-MARKER")

    ConceptDistillation(metric=metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    prompts = [entry["messages"][-1]["content"] for entry in teacher.history]
    assert prompts and all("Metric feedback: FEEDBACK-MARKER" in p for p in prompts)


def test_unparseable_teacher_reply_is_retried_then_skipped_without_crashing(caplog):
    world = worst_first()
    world.bad_teacher_calls = {0, 1, 2, 3}  # batch 0: both attempts (and their JSON fallbacks) fail
    train, val, _, teacher = setup(world)
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill"):
        optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, teacher_retries=1,
                                        num_threads=1).compile(  # scripted failures count calls: keep their order
            dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    result = optimized.distillation
    assert result.replies[0].error is not None and result.replies[0].attempts == 2
    assert all(r.error is None for r in result.replies[1:])
    skipped = [r.getMessage() for r in caplog.records if "a batch of mistakes was skipped" in r.getMessage()]
    assert skipped == ["round 1: a batch of mistakes was skipped: no usable teacher reply after 2 attempt(s)"]
    assert result.accepted_rules  # later batches still produced helpful rules
    assert_verified(result)
    assert len(result.ruleset) and result.final_score > result.baseline_score


def test_student_budget_is_a_hard_limit_and_keeps_verified_work():
    world = worst_first()
    train, val, student, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, max_student_calls=75).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    result = optimized.distillation
    assert student.engine.calls <= 75
    assert "budget" in result.stopped
    assert_verified(result)  # what was decided before the budget ran out stands: the harmful rules were rejected
    assert [r.status for r in result.rules if r.reason.startswith("dropped in the race")] == ["rejected"] * 2
    assert any("not verified" in r.reason for r in result.rejected_rules)
    assert independent_score(optimized, val, world.metric) == pytest.approx(result.final_score)


def test_teacher_budget_is_a_hard_limit(world):
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, max_teacher_calls=2).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    assert teacher.engine.calls == 2  # exact: one request per batch here, and the third batch is refused
    assert len(optimized.distillation.replies) == 2
    assert optimized.distillation.teacher_calls == 2


def test_the_cache_never_runs_a_variant_on_an_example_twice(world):
    train, val, student, teacher = setup(world)
    seen = []
    original = student.engine.complete

    def recording(request):
        seen.append((request.system, tuple(m.text for m in request.messages)))
        return original(request)

    student.engine.complete = recording
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, auto="medium").compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train + val[:5], valset=val)
    assert len(seen) == len(set(seen)) == optimized.distillation.student_calls


def test_returned_program_is_never_worse_even_when_every_rule_hurts():
    world = SimulatedWorld(concepts=[], distractors=[
        Distractor("Answer with the number written out in words.", "written out in words", breaks=frozenset({"*"}))])
    world.concepts = [Concept("units", "zzz-never-proposed", "unused")]
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    result = optimized.distillation
    assert result.accepted_rules == []
    assert result.final_score == result.baseline_score
    untouched = dspy.ChainOfThought("question -> answer: float").predict.signature.instructions
    assert optimized.predict.signature.instructions == untouched


def test_candidate_programs_are_best_first_and_scored(world):
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    candidates = optimized.candidate_programs
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True) and len(candidates) == 4
    assert candidates[0]["program"] is optimized and len(candidates[0]["rules"]) == 3
    assert candidates[-1]["score"] == pytest.approx(optimized.distillation.baseline_score)


def test_same_seed_same_run(world):
    train, val, _, _ = setup(world)

    def run(seed):
        fresh_teacher = world.teacher_lm()
        out = ConceptDistillation(metric=world.metric, teacher_lm=fresh_teacher, seed=seed).compile(
            dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
        return out.distillation.report().to_json(), out.distillation.student_calls

    assert run(7) == run(7)


def test_without_valset_the_trainset_is_split_by_seed_and_logged(world, caplog):
    train, _, _, teacher = setup(world, n_train=30, n_val=0)
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        out = ConceptDistillation(metric=world.metric, teacher_lm=teacher, seed=3).compile(
            dspy.ChainOfThought("question -> answer: float"), trainset=train)
    assert "split the trainset (seed=3) into 15 training and 15 validation examples" in caplog.text
    assert out.distillation.valset_size == 15 and out.distillation.trainset_size == 15


def test_more_rounds_build_on_the_rules_already_accepted():
    world = SimulatedWorld(distractors=[])
    train, val, _, teacher = setup(world)
    out = ConceptDistillation(metric=world.metric, teacher_lm=teacher, rounds=2, num_batches=1,
                              mistakes_per_batch=4, max_rules_per_batch=1).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    result = out.distillation
    assert len(result.rounds) == 2
    assert result.rounds[1].val_score_before == pytest.approx(result.rounds[0].val_score_after)
    assert result.rounds[1].mistakes < result.rounds[0].mistakes
    assert {r.round for r in result.accepted_rules} == {0, 1}


def test_save_and_load_round_trip_the_optimized_instructions(world, tmp_path):
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    path = tmp_path / "program.json"
    optimized.save(str(path))
    fresh = dspy.ChainOfThought("question -> answer: float")
    assert "round up partial groups" not in fresh.predict.signature.instructions
    fresh.load(str(path))
    assert fresh.predict.signature.instructions == optimized.predict.signature.instructions
    assert independent_score(fresh, val, world.metric) == pytest.approx(1.0)


def test_exported_rules_apply_to_another_program_and_can_be_rechecked(world, tmp_path):
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    optimized.distillation.ruleset.to_json(tmp_path / "rules.json")
    optimized.distillation.ruleset.to_markdown(tmp_path / "rules.md")
    for loaded in (RuleSet.from_json(tmp_path / "rules.json"), RuleSet.from_markdown(tmp_path / "rules.md")):
        assert [r.text for r in loaded] == [r.text for r in optimized.distillation.ruleset]
        applied = loaded.apply(dspy.ChainOfThought("question -> answer: float"))
        assert independent_score(applied, val, world.metric) == pytest.approx(1.0)
    # re-check for another student: a world where the 'units' concept no longer helps
    other = SimulatedWorld(concepts=[c for c in world.concepts if c.name != "units"], distractors=[])
    other._examples = world._examples
    dspy.configure(lm=other.student_lm())
    rechecked = ConceptDistillation(metric=world.metric, teacher_lm=teacher).verify(
        dspy.ChainOfThought("question -> answer: float"), RuleSet.from_json(tmp_path / "rules.json"), valset=val)
    kept = {r.text for r in rechecked.distillation.accepted_rules}
    assert world.concepts[0].rule not in kept
    assert {c.rule for c in world.concepts[1:]} <= kept
    assert rechecked.distillation.teacher_calls == 0


def test_report_and_usage_ledger(world):
    train, val, _, teacher = setup(world)
    result = ConceptDistillation(metric=world.metric, teacher_lm=teacher, screen_size=1).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation
    frame = result.report()
    assert list(frame.columns)[:6] == ["round", "predictor", "rule", "status", "gain", "evaluated_on"]
    assert len(frame) == len(result.rules)
    assert list(frame["status"])[:3] == ["accepted"] * 3
    usage = result.usage_report()
    assert {"mistakes", "screening", "verification", "induction"} <= set(usage["phase"])
    assert set(usage["role"]) == {"student", "teacher"}
    assert (usage["input_tokens"] > 0).all() and (usage["output_tokens"] > 0).all()
    assert usage.loc[usage.role == "student", "calls"].sum() == result.student_calls
    assert "accepted rules (3)" in result.summary()
    assert "<table" in result.to_html()


def test_compile_never_prints(world, capsys):
    train, val, _, teacher = setup(world)
    ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    assert capsys.readouterr().out == ""


def test_student_lm_failure_keeps_finished_work_and_resumes_from_checkpoint(tmp_path):
    world = worst_first()
    train, val, student, teacher = setup(world)
    original = student.engine.complete
    budget = {"left": 70}

    def flaky(request):
        budget["left"] -= 1
        if budget["left"] < 0:
            from dspy.lm15 import TransportError
            raise TransportError("connection refused")
        return original(request)

    student.engine.complete = flaky
    student.num_retries = 0
    runs = 160  # room for the two rules to reject and the three to accept
    opt = ConceptDistillation(metric=world.metric, teacher_lm=teacher, checkpoint_dir=str(tmp_path),
                              max_metric_calls=runs)
    first = opt.compile(dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    assert "student LM failed" in first.distillation.stopped
    assert_verified(first.distillation)
    calls_before = student.engine.calls
    student.engine.complete = original
    second = opt.compile(dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    assert second.distillation.final_score == pytest.approx(1.0)
    assert second.distillation.student_calls == student.engine.calls - calls_before
    # finished runs were not paid for again: both halves together cost what one uninterrupted compile costs
    fresh_student = world.student_lm()
    dspy.configure(lm=fresh_student)
    ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), max_metric_calls=runs).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    assert student.engine.calls == fresh_student.engine.calls
    assert (tmp_path / "compile_state.jsonl").exists()


def test_plain_category_only_world_has_no_mistakes():
    world = SimulatedWorld(concepts=[], distractors=[])
    train = world.make_examples({PLAIN: 10})
    val = world.make_examples({PLAIN: 6})
    dspy.configure(lm=world.student_lm())
    teacher = world.teacher_lm()
    out = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.Predict("question -> answer: float"), trainset=train, valset=val)
    assert out.distillation.mistakes == [] and teacher.engine.calls == 0
    assert out.distillation.final_score == out.distillation.baseline_score == 1.0


def test_optimized_program_deep_copies_cleanly(world, caplog):
    train, val, _, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    with caplog.at_level(logging.WARNING):
        copied = optimized.deepcopy()
    assert "Failed to deep copy" not in caplog.text
    assert copied.distillation is not optimized.distillation
    assert copied.distillation.student_calls == optimized.distillation.student_calls
    assert copied.predict.signature.instructions == optimized.predict.signature.instructions


def test_a_custom_metric_threshold_changes_what_counts_as_a_mistake_not_the_score_scale(world):
    train, val, _, teacher = setup(world)

    def graded(example, prediction, trace=None):  # 0.9 for a right answer, 0.2 for a wrong one
        return 0.9 if world.metric(example, prediction) else 0.2

    optimized = ConceptDistillation(metric=graded, teacher_lm=teacher, metric_threshold=0.5).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    result = optimized.distillation
    assert all(m.score == pytest.approx(0.2) for m in result.mistakes)  # 0.9 < 1.0 is not a mistake here
    assert len(result.mistakes) == 12
    assert result.min_gain == 0.0  # gains are judged in units of the metric's own spread, whatever its scale
    assert {r.text for r in result.accepted_rules} == set(world.helpful_rules)
    assert result.final_score == pytest.approx(0.9)


def test_the_teacher_reads_only_predictor_fields_and_a_metric_failure_as_the_metrics(world):
    train, val, _, teacher = setup(world)
    extra = {"id": "EXAMPLE-ID", "source": "SOURCE-NAME", "rationale": "RATIONALE-TEXT"}
    train = [ex.copy(**extra) for ex in train]
    fails_on = {ex.question for ex in train[:6]}

    def metric(example, prediction, trace=None):
        if example.question in fails_on:
            return None  # a metric bug on some examples: a metric failure, not the program's
        return world.metric(example, prediction)

    ConceptDistillation(metric=metric, teacher_lm=teacher, num_threads=1).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    prompts = [entry["messages"][-1]["content"] for entry in teacher.history]
    assert prompts
    for marker in extra.values():
        assert not any(marker in p for p in prompts)
    assert any("The metric failed on this output" in p for p in prompts)
    assert not any("The program raised" in p for p in prompts)


def test_a_further_round_is_not_started_when_it_would_eat_the_confirmation_of_what_is_won(caplog):
    # one candidate per round: round 1 accepts a rule; a second round's trainset pass would leave too little to run
    # the held-back half of the 80-example valset for the starting instructions and the rules to return
    world = SimulatedWorld()
    train, val = world.split(40, 80)
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, auto="medium", num_batches=1,
                                        max_rules_per_batch=1, max_metric_calls=220, num_threads=1).compile(
            dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    messages = [r.getMessage() for r in caplog.records]
    result = optimized.distillation
    assert any(m.startswith("round 2 not started: the student budget left") for m in messages)
    assert not any("cannot run the 40 held-back valset examples" in m for m in messages)  # the confirmation ran
    assert len(result.accepted_rules) == 1 and len(result.ruleset) == 1
    assert result.final_score > result.baseline_score


def test_without_budget_for_the_held_back_half_the_returned_rules_are_checked_strictly_on_the_valset(caplog):
    from dspy_concept_distill.phases.statistics import SelectionSettings
    from dspy_concept_distill.phases.verification import returned_rules
    from dspy_concept_distill.rules import Rule

    class NoBudget:
        def left(self) -> float:
            return 0.0

    rule = Rule(text="Always show the unit.", predictor="predict")
    accepted = RuleSet([rule])
    valset = [dspy.Example(question=str(i)).with_inputs("question") for i in range(20)]
    baseline = [0.0] * 12 + [1.0] * 8

    class CachedOnly:  # the evaluator's cached valset scores; no budget left to run anything
        account = NoBudget()

        def scores(self, ruleset, examples):
            return [1.0] * 20 if len(ruleset) else [None] * len(examples)

        def run(self, jobs, phase, desc=None, on_usable=None):
            raise AssertionError("nothing may run without budget")

    settings = SelectionSettings(min_gain=0.0, confidence_z=1.0, futility_z=3.0, screen_size=0, max_score=1.0,
                                 prior_variance=0.0, final_z=1.0, strict_z=1.5)
    held_back = [dspy.Example(question=f"h{i}").with_inputs("question") for i in range(20)]
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        kept, note = returned_rules(CachedOnly(), valset, [], accepted, baseline, settings, held_back=held_back)
    assert kept == accepted and note is None  # +0.6 on every valset example passes the strict test
    assert any("cannot run the 20 held-back valset examples" in r.getMessage() for r in caplog.records)
    losing = [0.0] * 12 + [1.0] * 8
    CachedOnly.scores = lambda self, ruleset, examples: losing if len(ruleset) else [None] * len(examples)
    kept, note = returned_rules(CachedOnly(), valset, [], accepted, baseline, settings, held_back=held_back)
    assert not len(kept) and note  # no gain on the valset: the starting instructions come back
