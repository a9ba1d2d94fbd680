"""Per-rule evidence (issue 9): paired confidence intervals, adherence, leave-one-out ablation, the score trajectory,
and the drop-in parameters (other optimizers' names, GEPA's max_metric_calls, log_dir, verbose, cost caps)."""

import itertools
import logging

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.phases.statistics import paired_ci
from dspy_concept_distill.phases.verification import adherence
from dspy_concept_distill.rules import Rule, RuleSet
from dspy_concept_distill.testing import Distractor, SimulatedWorld


def setup(world: SimulatedWorld, n_train=20, n_val=20):
    train, val = world.split(n_train, n_val)
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)
    return train, val, student, teacher


def compile_world(world, **kwargs):
    train, val, student, teacher = setup(world)
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, **kwargs).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    return optimized.distillation, student, teacher


def test_paired_ci_brackets_the_mean_and_narrows_with_agreement():
    assert paired_ci([1.0, 0.0, 1.0, 0.0]) [0] < 0.5 < paired_ci([1.0, 0.0, 1.0, 0.0])[1]
    assert paired_ci([0.2] * 10) == pytest.approx([0.2, 0.2])
    wide, narrow = paired_ci([1.0, 0.0] * 5), paired_ci([1.0, 0.0] * 50)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_every_kept_rule_has_a_gain_interval_adherence_and_a_trajectory_step(world):
    result, _, _ = compile_world(world)
    assert len(result.accepted_rules) == 3
    for rule in result.accepted_rules:
        low, high = rule.gain_ci
        assert low <= rule.gain <= high
        assert rule.adherence.changed >= rule.adherence.fixed > 0
        assert rule.adherence.ignored is False
    steps = result.trajectory
    assert [s.rules for s in steps] == [0, 1, 2, 3]
    assert steps[0].score == pytest.approx(result.baseline_score)
    assert steps[-1].score == pytest.approx(result.final_score)
    for before, after in itertools.pairwise(steps):
        assert after.score - before.score == pytest.approx(after.gain)


def test_adherence_flags_a_rule_the_student_ignores(world):
    _, val, _, _ = setup(world)
    from dspy_concept_distill.runtime.evaluator import EvalCache, Evaluator
    from dspy_concept_distill.runtime.executor import Executor, StopSignal
    from dspy_concept_distill.runtime.ledger import Ledger
    from dspy_concept_distill.runtime.metering import Budget
    from dspy_concept_distill.runtime.metric import MetricAdapter

    program = dspy.ChainOfThought("question -> answer: float")
    base = {n: p.signature.instructions for n, p in program.named_predictors()}
    evaluator = Evaluator(program, base, MetricAdapter(world.metric), Budget(Ledger(), None, None), Executor(1),
                          StopSignal(), EvalCache())
    ignored = RuleSet([Rule("Read the problem carefully before answering.", "predict")])
    helpful = RuleSet([Rule(world.helpful_rules[0], "predict")])
    outcomes = evaluator.run([(RuleSet(), ex) for ex in val], "t")
    failing = [ex for ex, o in zip(val, outcomes, strict=True) if not o.score]
    evaluator.run([(r, ex) for r in (ignored, helpful) for ex in failing], "t")
    found = adherence(evaluator, RuleSet(), ignored, failing, "valset failures")
    assert found is not None and found.examples == len(failing) and found.changed == 0 and found.ignored is True
    helped = adherence(evaluator, RuleSet(), helpful, failing, "valset failures")
    assert helped is not None and helped.fixed > 0


def test_ablation_flags_a_rule_that_no_longer_adds_anything_once_the_others_are_in():
    # verify() keeps "groups" first (it fixes the groups category), then "both" (fixes groups and units: it adds
    # the units examples on top); once both are in, leaving "groups" out costs nothing.
    both = Distractor("Check groups and units together before answering.", "groups and units together",
                      fixes=frozenset({"groups", "units"}))
    world = SimulatedWorld(distractors=[both])
    _, val = world.split(10, 20)
    student = world.student_lm()
    dspy.configure(lm=student)
    groups = next(c.rule for c in world.concepts if c.name == "groups")
    rules = RuleSet([Rule(groups, "predict"), Rule(both.rule, "predict")])
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), ablation=True)
    result = optimizer.verify(dspy.ChainOfThought("question -> answer: float"), rules, valset=val).distillation
    kept = {r.text: r for r in result.accepted_rules}
    assert set(kept) == {groups, both.rule}
    assert kept[groups].ablation_gain == pytest.approx(0.0)  # redundant now: flagged
    assert kept[both.rule].ablation_gain >= result.min_gain
    assert "ablation" in set(result.usage_report()["phase"])
    assert result.student_calls == student.engine.calls <= result.budgets["student_calls"]


def test_no_ablation_unless_asked(world):
    result, _, _ = compile_world(world)
    assert all(r.ablation_gain is None for r in result.rules)
    assert "ablation" not in set(result.usage_report()["phase"])


@pytest.mark.parametrize(("name", "hint"), [("task_model", "dspy.configure"), ("max_full_evals", "max_metric_calls"),
                                            ("instruction_proposer", "teacher_lm"), ("gepa_kwargs", "gepa engine")])
def test_other_optimizers_parameter_names_that_cannot_be_honoured_get_our_equivalent(world, name, hint):
    # (names with an equivalent are read as ours: tests/test_swapping_in.py)
    with pytest.raises(TypeError, match=rf"'{name}': use .*{hint}"):
        ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), **{name: object()})


def test_unknown_parameter_lists_the_valid_ones(world):
    with pytest.raises(TypeError, match=r"'bogus': not a parameter.*max_student_calls"):
        ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), bogus=1)


def test_max_metric_calls_is_the_student_budget_in_program_runs(world):
    # 50 runs pay for the trainset and the valset baseline (40) but race no candidate: BudgetTooSmallError, or
    # with on_failure="return" the unchanged program and its spend
    result, student, _ = compile_world(world, max_metric_calls=50, on_failure="return")
    assert student.engine.calls <= 50 and result.budgets["student_calls"] == 50
    assert "budget" in result.stopped
    with pytest.raises(ValueError, match="not both"):
        ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), max_metric_calls=5,
                            max_student_calls=5)


def test_a_token_budget_is_a_hard_stop(world):
    result, _, _ = compile_world(world, max_tokens=10_000, on_failure="return")  # used up before any race
    used = sum(r.input_tokens + r.output_tokens for r in result.usage.rows())
    assert "token budget" in result.stopped
    assert used <= 10_000
    # nothing was raced, so nothing was accepted and the program comes back as it was
    assert not result.accepted_rules and not len(result.ruleset) and result.final_score == result.baseline_score


def test_log_dir_implies_checkpoints(world, tmp_path):
    compile_world(world, log_dir=str(tmp_path))
    assert (tmp_path / "compile_state.jsonl").exists()


def test_verbose_shows_debug_lines_on_stderr_and_leaves_the_logger_as_it_was(world, capsys):
    package = logging.getLogger("dspy_concept_distill")
    before = (package.level, list(package.handlers))
    compile_world(world, verbose=True)
    err = capsys.readouterr().err
    assert "before the run: student 40-127 LM calls" in err
    assert "concept distillation done" in err
    assert "DEBUG dspy_concept_distill.state: run closed" in err  # what verbose adds to the INFO lines always shown
    assert (package.level, package.handlers) == before  # no handler of its own: no line twice (tests/test_logging.py)
    compile_world(world)
    assert "DEBUG" not in capsys.readouterr().err


def test_the_projection_is_logged_before_the_first_call(world, caplog):
    with caplog.at_level(logging.INFO, logger="dspy_concept_distill"):
        compile_world(world)
    lines = [r.getMessage() for r in caplog.records]
    first = next(i for i, line in enumerate(lines) if line.startswith("before the run"))
    assert first < next(i for i, line in enumerate(lines) if "student on trainset" in line)
