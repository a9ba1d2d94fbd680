"""Re-optimizing continues (issue 15): compiling an optimized program, or verifying rules on one, recognizes the rules
already in its instructions. The returned program has one rule list; its result lists every rule in force, the
earlier ones marked as inherited with where they came from; and each inherited rule is re-checked on the new valset,
so a rule that stopped helping goes away with the measured reason."""

from __future__ import annotations

import math

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.rules import RULES_HEADER, RuleStatus
from dspy_concept_distill.runtime.account import SPECULATION_SHARE
from dspy_concept_distill.testing import PLAIN, SimulatedWorld


def program() -> dspy.Module:
    return dspy.ChainOfThought("question -> answer: float")


def listed(optimized: dspy.Module) -> list[str]:
    """The rule list in the program's instructions: one header, one list numbered from 1."""
    text = optimized.predict.signature.instructions
    assert text.count(RULES_HEADER) == 1, text
    lines = text.split(RULES_HEADER, 1)[1].strip().splitlines()
    assert [line.split(". ", 1)[0] for line in lines] == [str(i) for i in range(1, len(lines) + 1)]
    return [line.split(". ", 1)[1] for line in lines]


def data(world: SimulatedWorld, **per_category: int) -> list[dspy.Example]:
    return world.make_examples(per_category)


@pytest.fixture
def setup(world):
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)
    return ConceptDistillation(metric=world.metric, teacher_lm=teacher), student, teacher


def test_compiling_an_optimized_program_keeps_one_list_and_lists_every_rule_in_force(world, setup):
    optimizer, _, teacher = setup
    first = optimizer.compile(program(), trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1])
    earlier = {r.text: r for r in first.distillation.ruleset}
    assert len(earlier) == 3
    calls = teacher.engine.calls
    val = world.split(0, 20)[1]
    second = optimizer.compile(first, trainset=world.split(20, 0)[0], valset=val)
    result = second.distillation
    assert listed(second) == listed(first)  # nothing doubled, nothing lost
    assert [r.text for r in result.ruleset] == listed(second)
    for rule in result.ruleset:  # each one inherited, with its provenance, and re-checked on the new valset
        assert rule.inherited["source"] == "an earlier compile (program.distillation)"
        assert rule.inherited["earlier"]["gain"] == earlier[rule.text].gain
        assert rule.status == RuleStatus.ACCEPTED and rule.evaluated_on == len(val)
        assert "raised the valset score" in rule.reason
    assert result.inherited_rules == list(result.ruleset)
    assert result.baseline_score < result.final_score == pytest.approx(1.0)
    assert teacher.engine.calls == calls  # no mistakes left: the teacher was not asked again
    assert first.predict.signature.instructions.count(RULES_HEADER) == 1  # the first program is untouched


def test_a_rule_that_stopped_helping_goes_away_and_new_rules_join_the_same_list(world, setup):
    optimizer, _, _ = setup
    first = optimizer.compile(program(), trainset=data(world, units=6, groups=6, **{PLAIN: 8}),
                              valset=data(world, units=6, groups=6, **{PLAIN: 8}))
    units, groups = (world.concept(name).rule for name in ("units", "groups"))
    assert sorted(listed(first)) == sorted([units, groups])
    # new data without any units question, with a kind of mistake the first data did not have
    second = optimizer.compile(first, trainset=data(world, groups=6, leftover=6, **{PLAIN: 8}),
                               valset=data(world, groups=6, leftover=6, **{PLAIN: 8}))
    result = second.distillation
    leftover = world.concept("leftover").rule
    assert listed(second) == [groups, leftover]
    by_text = {r.text: r for r in result.rules}
    dropped = by_text[units]
    assert dropped.inherited is not None and dropped.status == RuleStatus.REJECTED
    assert dropped.evaluated_on > 0 and dropped.gain == pytest.approx(0.0) and dropped.reason  # measured, with why
    assert by_text[groups].inherited is not None and by_text[groups].status == RuleStatus.ACCEPTED
    assert by_text[leftover].inherited is None and by_text[leftover].status == RuleStatus.ACCEPTED
    assert [r.text for r in result.ruleset] == [groups, leftover]


def test_a_saved_and_loaded_program_is_recognized_from_its_instructions(world, setup, tmp_path):
    optimizer, _, _ = setup
    first = optimizer.compile(program(), trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1])
    first.save(tmp_path / "program.json")
    loaded = program()
    loaded.load(tmp_path / "program.json")
    assert not hasattr(loaded, "distillation")
    second = optimizer.compile(loaded, trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1])
    assert listed(second) == listed(first) == [r.text for r in second.distillation.ruleset]
    assert all(r.inherited == {"source": "the program's instructions", "earlier": None}
               for r in second.distillation.ruleset)


def test_verifying_rules_on_an_optimized_program_does_not_stack_them(world, setup):
    optimizer, _, _ = setup
    first = optimizer.compile(program(), trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1])
    checked = optimizer.verify(first, first.distillation.ruleset, valset=world.split(0, 20)[1])
    assert listed(checked) == listed(first)
    assert len(checked.distillation.ruleset) == 3 and len(checked.distillation.rules) == 3


def test_an_ordinary_compile_inherits_nothing_and_its_budget_is_unchanged(world, setup):
    optimizer, _, _ = setup
    result = optimizer.compile(program(), trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1]).distillation
    assert result.inherited_rules == [] and all(r.inherited is None for r in result.rules)
    # light: a trainset pass and five valset passes, with the reserve for work ahead on top
    assert result.budgets["student_calls"] == math.ceil((20 + 5 * 20) / (1 - SPECULATION_SHARE))


def test_the_report_marks_inherited_rules_and_says_where_they_came_from(world, setup):
    optimizer, _, _ = setup
    first = optimizer.compile(program(), trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1])
    result = optimizer.compile(first, trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1]).distillation
    kept_lines = [line for line in result.summary().splitlines() if line.startswith("  + R")]
    assert len(kept_lines) == 3 and all("(inherited |" in line for line in kept_lines)
    assert result.report()["inherited"].tolist() == [True] * 3
    page = result.to_html()
    assert "<td>inherited</td>" in page and "Inherited from an earlier compile (program.distillation)" in page


def test_copies_of_an_optimized_program_do_not_carry_its_earlier_results(world, setup):
    optimizer, _, _ = setup
    optimized = program()
    for _ in range(3):  # each compile's copies would otherwise hold every earlier result, again and again
        optimized = optimizer.compile(optimized, trainset=world.split(20, 0)[0], valset=world.split(0, 20)[1])
    candidates = optimized.candidate_programs
    assert len(candidates) == 4 and candidates[0]["program"] is optimized
    for candidate in candidates[1:]:
        assert not hasattr(candidate["program"], "distillation")
        assert not hasattr(candidate["program"], "candidate_programs")
    assert optimized.distillation.inherited_rules == list(optimized.distillation.ruleset)


def test_a_re_optimizing_compile_resumes_from_its_checkpoint(world, setup, tmp_path):
    optimizer, student, teacher = setup
    first = optimizer.compile(program(), trainset=data(world, units=6, groups=6, **{PLAIN: 8}),
                              valset=data(world, units=6, groups=6, **{PLAIN: 8}))
    train, val = data(world, groups=6, leftover=6, **{PLAIN: 8}), data(world, groups=6, leftover=6, **{PLAIN: 8})
    resumable = ConceptDistillation(metric=world.metric, teacher_lm=teacher, checkpoint_dir=str(tmp_path))
    once = resumable.compile(first, trainset=train, valset=val).distillation
    calls = (student.engine.calls, teacher.engine.calls)
    again = resumable.compile(first, trainset=train, valset=val).distillation
    assert (student.engine.calls, teacher.engine.calls) == calls  # every run and reply came from the checkpoint
    assert [(r.text, r.status, r.reason) for r in again.rules] == [(r.text, r.status, r.reason) for r in once.rules]
    assert again.ruleset == once.ruleset and len(again.inherited_rules) == 2
