"""The scripted LMs of dspy_concept_distill.testing: replies written by DSPy's adapters in the format each request
asks for, inputs read with DSPy's own parser, and a teacher that does not depend on how mistakes are laid out."""

from __future__ import annotations

import dspy
import pytest

from benchmarks.harness.simulated.worlds import PlanThenAnswer  # plan -> answer: "plan" and "answer.predict"
from dspy_concept_distill.phases.induction import InduceConcepts, describe_task, induction_signature
from dspy_concept_distill.testing import PLAIN, Concept, SimulatedWorld, predictor_for


def ask_teacher(world: SimulatedWorld, mistakes: str, *, adapter: dspy.Adapter | None = None, max_rules: int = 8,
                signature: type[dspy.Signature] | None = None, task: str = "Predictor `predict`") -> dspy.Prediction:
    teacher = world.teacher_lm()
    with dspy.context(lm=teacher, adapter=adapter or dspy.ChatAdapter()):
        out = dspy.Predict(signature or induction_signature(max_rules, 5))(
            task=task, rules_in_force="(none yet)", mistakes=mistakes, max_rules=max_rules)
    assert teacher.engine.calls == 1  # parsed on the first try: no JSON-adapter fallback
    return out


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_student_replies_parse_in_the_adapter_the_request_uses(world, adapter):
    train, _ = world.split(10, 5)
    student = world.student_lm()
    program = dspy.ChainOfThought("question -> answer: float")
    with dspy.context(lm=student, adapter=adapter):
        scores = [world.metric(ex, program(**ex.inputs())) for ex in train]
    assert student.engine.calls == len(train)  # one call each: nothing fell back to another adapter
    assert sum(scores) == 4  # exactly the plain examples (40%) are right without any concept


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_teacher_finds_the_examples_anywhere_in_the_mistakes_input(world, adapter):
    units, leftover = (world.make_examples({name: 1})[0] for name in ("units", "leftover"))
    plain = world.make_examples({PLAIN: 1})[0]
    # a layout nothing like Mistake.render: examples in free text, numbered by order of appearance
    mistakes = f"First the student failed on «{units.question}», then on «{plain.question}» and «{leftover.question}»."
    analysis = ask_teacher(world, mistakes, adapter=adapter).analysis
    rules = {r.rule: r.mistakes for r in analysis.rules}
    assert rules[world.concept("units").rule] == [1] and rules[world.concept("leftover").rule] == [3]
    assert world.concept("groups").rule not in rules  # no groups mistake shown, no groups rule
    assert len(analysis.diagnoses) == 3


def test_teacher_respects_max_rules_and_the_uncapped_signature(world):
    ex = world.make_examples({"units": 1})[0]
    capped = ask_teacher(world, f"Mistake: {ex.question}", max_rules=2).analysis
    assert len(capped.rules) == 2 and capped.rules[0].rule == world.concept("units").rule
    uncapped = ask_teacher(world, f"Mistake: {ex.question}", max_rules=3, signature=InduceConcepts).analysis
    assert len(uncapped.rules) == 3


def test_teacher_names_the_predictor_that_produces_the_concepts_field():
    world = SimulatedWorld([Concept("units", "same unit", "When planning, convert units first.", field="plan"),
                            Concept("leftover", "subtract", "Subtract what was given away first.")], [])
    program = PlanThenAnswer()
    task = describe_task(program, {n: p.signature.instructions for n, p in program.named_predictors()})
    assert predictor_for(task, "plan") == "plan" and predictor_for(task, "answer") == "answer.predict"
    exs = world.make_examples({"units": 1, "leftover": 1})
    analysis = ask_teacher(world, "\n".join(e.question for e in exs), task=task).analysis
    assert {r.rule: r.predictor for r in analysis.rules} == {"When planning, convert units first.": "plan",
                                                             "Subtract what was given away first.": "answer.predict"}


def test_two_predictor_student_passes_a_bad_plan_on_to_the_answer():
    world = SimulatedWorld([Concept("units", "same unit", "When planning, use the same unit.", field="plan")], [])
    train = world.make_examples({"units": 3, PLAIN: 3})
    program = PlanThenAnswer()
    with dspy.context(lm=world.student_lm()):
        before = [world.metric(ex, program(**ex.inputs())) for ex in train]
        program.plan.signature = program.plan.signature.with_instructions("Plan. When planning, use the same unit.")
        after = [world.metric(ex, program(**ex.inputs())) for ex in train]
    assert sum(before) == 3 and sum(after) == 6  # the units examples fail only through their plan


def test_unparseable_teacher_calls_are_scripted_by_index():
    world = SimulatedWorld(bad_teacher_calls=[0])
    teacher = world.teacher_lm()
    with dspy.context(lm=teacher):
        out = dspy.Predict(induction_signature(4, 5))(task="Predictor `predict`", rules_in_force="",
                                                       mistakes="Q1", max_rules=4)
    assert teacher.engine.calls == 2  # call 0 failed to parse; DSPy's JSON-adapter fallback is call 1
    assert out.analysis.diagnoses == [] and len(out.analysis.rules) == 4  # no known example: only distractors


def test_scripted_lms_deep_copy_and_pickle_without_warnings(world, caplog):
    import copy
    import logging
    import pickle

    from dspy_concept_distill import ConceptDistillation
    from dspy_concept_distill.testing.faults import FaultyEngine, RequestCounter, faulty_lm

    student, teacher = world.student_lm(), world.teacher_lm()
    program = dspy.ChainOfThought("question -> answer: float")
    program.set_lm(student)
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=teacher)
    faulty = faulty_lm("faulty/student", FaultyEngine(student.engine, counter=RequestCounter()))
    with caplog.at_level(logging.WARNING):
        copied = program.deepcopy()
        copy.deepcopy(optimizer)
        copy.deepcopy(faulty)
    assert not [r.getMessage() for r in caplog.records]  # no "Failed to deep copy attribute 'lm'"
    # an engine stands for a model, as a client stands for a server: copies of the program share it, so the calls it
    # counts are still every call made
    assert copied.predict.lm is not student and copied.predict.lm.engine is student.engine
    example = world.split(1, 0)[0][0]
    copied(**example.inputs())
    assert student.engine.calls == 1

    restored = pickle.loads(pickle.dumps(optimizer))
    restored.teacher_lm("Any mistakes?")  # the unpickled engine answers (its lock is new)
    assert restored.teacher_lm.engine.calls >= 1 and teacher.engine.calls == 0
    again = pickle.loads(pickle.dumps(faulty))
    with dspy.context(lm=again):
        dspy.Predict("question -> answer: float")(**example.inputs())
    assert again.engine.received == 1 and faulty.engine.received == 0
