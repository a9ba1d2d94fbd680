"""The task family of ``python -m benchmarks family``: the simulated worlds behave as documented, the blind proposer
answers every optimizer's signatures (ConceptDistillation's teacher signature included), the judges compute oracle
accuracy, recall and harmful acceptance correctly, and the runner produces every report field."""

from __future__ import annotations

import dataclasses
import json

import dspy
import pytest
from dspy.teleprompt.copro_optimizer import BasicGenerateInstruction
from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer
from dspy.teleprompt.simba_utils import OfferFeedback

from benchmarks import cli
from benchmarks.harness.simulated import family
from benchmarks.harness.simulated import family_report as report
from benchmarks.harness.simulated.proposer import PoolRule, SimulatedProposerEngine, proposer_lm
from benchmarks.harness.simulated.runs import score_with
from benchmarks.harness.simulated.tasks import ISSUE6_TASKS, KINDS, TASKS, TASKS_BY_NAME, _counts
from benchmarks.harness.simulated.worlds import (
    NOTES_CALLS_PER_RUN,
    DiffuseWorld,
    PlanThenAnswer,
    best_rule_set,
    stages_with,
)
from dspy_concept_distill.phases.induction import InduceConcepts, induction_signature
from dspy_concept_distill.testing import SimulatedTask
from tests.helpers import REPO

HELP = PoolRule("Convert every quantity to the same unit first.", "same unit", "helpful", effect=0.2)
HARM = PoolRule("Answer with the number written out in words.", "written out in words", "harmful", effect=-0.2)
NEUTRAL = PoolRule("Read the problem carefully before answering.", "read the problem carefully", "neutral")
PLAN_HELP = PoolRule("When planning, list every quantity first.", "list every quantity", "helpful", "plan", 0.2)


def diffuse(redraw: float = 0.3, flip_rate: float = 0.0, rules=(HELP, HARM, NEUTRAL)) -> DiffuseWorld:
    return DiffuseWorld(list(rules), baseline=0.4, redraw=redraw, flip_rate=flip_rate, seed=3)


def answers(world: DiffuseWorld, examples, variant: str, active) -> list[bool]:
    return [world.correct(world.example(ex.question), variant, active) for ex in examples]


def evaluate(program: dspy.Module, lm: dspy.LM, examples) -> list[bool]:
    with dspy.context(lm=lm):
        return [DiffuseWorld.metric(ex, program(**ex.inputs())) for ex in examples]


def with_instructions(program: dspy.Module, **texts: str) -> dspy.Module:
    for name, predictor in program.named_predictors():
        if name in texts:
            predictor.signature = predictor.signature.with_instructions(texts[name])
    return program


# -- the diffuse world ----------------------------------------------------------------------------------------------
def test_diffuse_accuracy_is_the_baseline_plus_the_effects_in_force():
    world = diffuse()
    examples = world.make_examples(4000)
    for active, expected in (([], 0.4), ([HELP], 0.6), ([HELP, HARM], 0.4), ([NEUTRAL], 0.4)):
        measured = sum(answers(world, examples, f"variant {len(active)}", active)) / len(examples)
        assert measured == pytest.approx(expected, abs=0.025)
    helpful_alone = world.expected_accuracy(stages_with([HELP], {"answer": "predict"}))
    assert helpful_alone - world.expected_accuracy(stages_with([], {"answer": "predict"})) == pytest.approx(0.2)


def test_any_prompt_change_redraws_some_answers_and_fixes_failing_ones_only_sometimes():
    world = diffuse(redraw=0.3)
    examples = world.make_examples(4000)
    base = answers(world, examples, "base", [])
    neutral = answers(world, examples, "base + neutral", [NEUTRAL])
    helpful = answers(world, examples, "base + helpful", [HELP])
    failing = [i for i, ok in enumerate(base) if not ok]
    fixed_by_neutral = sum(neutral[i] for i in failing) / len(failing)
    fixed_by_helpful = sum(helpful[i] for i in failing) / len(failing)
    r, p, d = 0.3, 0.4, 0.2  # the base prompt's answers are re-drawn too, so a failing example is fixed with
    assert fixed_by_neutral == pytest.approx(r * p * (2 - r), abs=0.03)  # r p (2 - r) by a neutral rule, and
    assert fixed_by_helpful == pytest.approx((1 - r) * (r * (p + d) + (1 - r) * d / (1 - p)) + r * (p + d), abs=0.03)
    assert answers(world, examples, "base", []) == base  # the same prompt gives the same answers
    still = diffuse(redraw=0.0)
    still_examples = still.make_examples(500)
    assert answers(still, still_examples, "a", []) == answers(still, still_examples, "b", [NEUTRAL])


def test_flip_noise_lowers_expected_and_measured_accuracy_alike():
    world = diffuse(flip_rate=0.2)
    examples = world.make_examples(4000)
    expected = world.expected_accuracy(stages_with([HELP], {"answer": "predict"}))
    assert expected == pytest.approx(0.6 * 0.8 + 0.4 * 0.2)
    assert sum(answers(world, examples, "v", [HELP])) / len(examples) == pytest.approx(expected, abs=0.025)


def test_diffuse_student_engine_answers_as_the_model_says_and_redraws_on_any_prompt_change():
    world = diffuse()
    examples = world.make_examples(60)
    program = dspy.ChainOfThought("question -> answer: float")
    lm = world.student_lm()
    base = evaluate(program, lm, examples)
    assert lm.engine.calls == 60 and 0 < sum(base) < 60
    reworded = evaluate(with_instructions(program.deepcopy(), predict="Solve it. Read the problem carefully."),
                        lm, examples)
    assert reworded != base  # a neutral rewording re-draws some answers
    assert evaluate(program, lm, examples) == base  # deterministic per prompt


def test_rules_act_only_in_the_predictor_they_target():
    world = DiffuseWorld([PLAN_HELP, HELP], baseline=0.3, redraw=0.0, seed=1)
    examples = world.make_examples(300)
    lm = world.student_lm()
    rate = {}
    for where in ("plan", "answer.predict", "none"):
        program = PlanThenAnswer()
        if where != "none":
            with_instructions(program, **{where: "Do it. When planning, list every quantity first."})
        rate[where] = sum(evaluate(program, lm, examples)) / len(examples)
    assert rate["plan"] == pytest.approx(0.5, abs=0.07) and rate["answer.predict"] == rate["none"]
    assert rate["none"] == pytest.approx(0.3, abs=0.07)
    inst = TASKS_BY_NAME["diffuse-2pred"].build(0)
    plan_rule = next(r for r in inst.pool if r.field == "plan" and r.kind == "helpful")
    in_plan = with_instructions(PlanThenAnswer(), plan=plan_rule.text)
    in_answer = with_instructions(PlanThenAnswer(), **{"answer.predict": plan_rule.text})
    assert inst.in_force(in_plan) == [plan_rule] and inst.in_force(in_answer) == []
    assert inst.expected_accuracy(in_plan) - inst.expected_accuracy(in_answer) == pytest.approx(0.2 * 0.9)


# -- the concept world, as today's ----------------------------------------------------------------------------------
def test_todays_task_is_todays_simulated_world():
    for seed in (0, 3):
        inst, today = TASKS_BY_NAME["today"].build(seed), SimulatedTask.create(20, 20, seed=seed)
        assert [e.question for e in inst.trainset] == [e.question for e in today.trainset]
        assert [e.question for e in inst.valset] == [e.question for e in today.valset]
    assert (inst.baseline_accuracy, inst.oracle_accuracy) == (pytest.approx(0.4), pytest.approx(1.0))


@pytest.mark.parametrize("name", ["today", "concept-2pred", "today-noisy"])
def test_concept_expected_accuracy_matches_what_the_student_scores(name):
    inst = TASKS_BY_NAME[name].build(1)
    lm = inst.student_lm()
    for subset in ([], inst.pool[:1], inst.pool[:3], [inst.pool[0], inst.pool[3]]):
        program = inst.program()
        for field, predictor in inst.names.items():
            text = " ".join(r.text for r in subset if r.field == field)
            with_instructions(program, **{predictor: f"Solve it. {text}"})
        measured = sum(evaluate(program, lm, inst.testset)) / len(inst.testset)
        assert measured == pytest.approx(inst.expected_accuracy(program), abs=0.08)


def test_oracle_is_the_best_rule_subset():
    inst = TASKS_BY_NAME["concept-small"].build(0)
    oracle, best = best_rule_set(inst.pool, inst.accuracy_of_stages, inst.names)
    assert oracle == pytest.approx(0.95)  # every category right, then 5% of the answers flipped
    assert sorted(r.kind for r in best) == ["helpful"] * 3  # the tempting rule would break 'leftover'


def test_counts_follow_the_shares():
    assert _counts((("plain", 0.4), ("a", 0.2), ("b", 0.2), ("c", 0.2)), 20) == {"plain": 8, "a": 4, "b": 4, "c": 4}
    assert _counts((("plain", 0.6), ("a", 0.05), ("b", 0.1), ("c", 0.25)), 20) == {"plain": 12, "a": 1, "b": 2,
                                                                                  "c": 5}


def test_family_covers_every_axis():
    assert {t.mode for t in TASKS} == {"concept", "diffuse"} and {t.proposer for t in TASKS} == {"blind", "teacher"}
    assert {t.predictors for t in ISSUE6_TASKS} == {1, 2} and {t.n_val for t in TASKS} >= {20, 40, 100, 200}
    assert min(t.flip_rate for t in TASKS) == 0 and max(t.flip_rate for t in TASKS) == pytest.approx(0.2)
    effects = {round(r.effect, 2) for t in ISSUE6_TASKS for r in t.build(0).pool if r.kind == "helpful"}
    assert min(effects) <= 0.05 and max(effects) >= 0.25
    issue = TASKS_BY_NAME["diffuse-issue"].describe()
    assert (issue["baseline_accuracy"], issue["oracle_accuracy"]) == (0.4, 0.8)
    assert [r["kind"] for r in issue["pool"]].count("neutral") == 3 and issue["proposer"] == "blind"


# -- issue 14's task kinds ------------------------------------------------------------------------------------------
NEW_KINDS = ["generic-pool", "partial-credit", "subgroup-tempting", "scale-200", "misplaced-2pred", "multi-call"]


def program_with(inst, rules, *, where: dict[str, str] | None = None) -> dspy.Module:
    """The task's program with ``rules`` in the predictors they act in (or in ``where[rule.text]``)."""
    program = inst.program()
    texts: dict[str, list[str]] = {}
    for rule in rules:
        texts.setdefault((where or {}).get(rule.text, inst.names[rule.field]), []).append(rule.text)
    return with_instructions(program, **{name: "Solve it. " + " ".join(t) for name, t in texts.items()})


def large_split(inst, n: int) -> list:
    task = inst.task
    return inst.world.make_examples(n) if task.mode == "diffuse" else inst.world.make_examples(_counts(task.shares, n))


@pytest.mark.parametrize("name", NEW_KINDS)
def test_new_kinds_oracle_is_what_the_scripted_student_scores(name):
    inst = TASKS_BY_NAME[name].build(5)
    examples = large_split(inst, 400 if name == "multi-call" else 800)  # 2000 program runs of five calls
    oracle, best = best_rule_set(inst.pool, inst.accuracy_of_stages, inst.names)
    for rules, expected in (([], inst.baseline_accuracy), (best, oracle), (inst.pool, None)):
        program = program_with(inst, rules)
        lm = inst.student_lm()
        measured = score_with(program, lm, examples, inst.metric, num_threads=4)
        assert measured == pytest.approx(inst.expected_accuracy(program), abs=0.04)
        if expected is not None:
            assert inst.expected_accuracy(program) == pytest.approx(expected)
        assert lm.engine.calls == len(examples) * {"misplaced-2pred": 2, "multi-call": 5}.get(name, 1)


@pytest.mark.parametrize(("name", "baseline", "oracle", "sizes"), [
    ("generic-pool", 0.45, 0.65, (30, 30, 200)), ("partial-credit", 0.5975, 0.682, (40, 40, 200)),
    ("subgroup-tempting", 0.491, 0.689, (40, 40, 200)), ("scale-200", 0.40, 0.80, (200, 200, 200)),
    ("misplaced-2pred", 0.35, 0.70, (40, 40, 200)), ("multi-call", 0.40, 0.75, (30, 30, 200))])
def test_new_kinds_are_deterministic_per_seed_with_the_stated_sizes_and_accuracies(name, baseline, oracle, sizes):
    described = TASKS_BY_NAME[name].describe()
    assert (described["baseline_accuracy"], described["oracle_accuracy"]) == (pytest.approx(baseline),
                                                                             pytest.approx(oracle))
    one, again, other = (TASKS_BY_NAME[name].build(seed) for seed in (7, 7, 8))
    assert tuple(len(s) for s in (one.trainset, one.valset, one.testset)) == sizes
    questions = [[e.question for e in split] for split in (one.trainset, one.valset, one.testset)]
    assert questions == [[e.question for e in split] for split in (again.trainset, again.valset, again.testset)]
    assert one.pool == again.pool and [e.answer for e in one.testset] != [e.answer for e in other.testset]
    assert {r["kind"] for r in described["pool"]} <= set(KINDS) and described["fingerprint"]
    assert one.proposer_lm().engine.draw_rules("k") == again.proposer_lm().engine.draw_rules("k")


def test_issue6_tasks_keep_the_fingerprints_of_the_stored_results():
    stored = json.loads((REPO / "benchmarks/results/family_after.json").read_text())["tasks"]
    assert {t.name: t.fingerprint() for t in ISSUE6_TASKS} == {n: t["fingerprint"] for n, t in stored.items()}
    assert len({t.fingerprint() for t in TASKS}) == len(TASKS)
    assert TASKS_BY_NAME["multi-call"].fingerprint() != dataclasses.replace(
        TASKS_BY_NAME["multi-call"], program="").fingerprint()  # later fields count when set


def test_generic_pool_has_cheap_generic_rules_counted_apart_from_neutral_and_harmful_ones():
    inst = TASKS_BY_NAME["generic-pool"].build(0)
    kinds = [r.kind for r in inst.pool]
    assert (kinds.count("generic"), kinds.count("helpful"), kinds.count("harmful")) == (7, 2, 1)
    assert "neutral" not in kinds
    assert all(-0.03 - 1e-9 <= r.effect <= -0.01 + 1e-9 for r in inst.pool if r.kind == "generic")
    assert sorted(r.effect for r in inst.pool if r.kind != "generic") == pytest.approx([-0.15, 0.10, 0.10])
    generic = [r for r in inst.pool if r.kind == "generic"][:2]
    helpful = next(r for r in inst.pool if r.kind == "helpful")
    record = report.RunRecord("generic-pool", "x", 0, pool_generic=7)
    family.judge(record, program_with(inst, [*generic, helpful]), inst, threads=2)
    assert record.generic_in_force == [r.text for r in generic] and record.neutral_in_force == []
    assert record.helpful_in_force == [helpful.text] and record.harmful_in_force == []
    assert record.oracle_accuracy == pytest.approx(0.45 + 0.10 + sum(r.effect for r in generic))


def test_partial_credit_scores_are_never_zero_or_one_and_the_oracle_is_the_expected_score():
    inst = TASKS_BY_NAME["partial-credit"].build(0)
    examples = inst.world.make_examples(3000)
    right = [inst.metric(e, dspy.Prediction(answer=e.answer)) for e in examples]
    wrong = [inst.metric(e, dspy.Prediction(answer=e.answer + 7)) for e in examples]
    broken = [inst.metric(e, dspy.Prediction(answer="seven")) for e in examples[:50]]
    assert all(0.70 <= s < 0.95 for s in right) and all(0.05 <= s < 0.30 for s in wrong + broken)
    assert len({round(s, 6) for s in right}) > 100  # a per-example component, not two values
    assert sum(right) / len(right) == pytest.approx(0.825, abs=0.01) and sum(wrong) / len(wrong) == pytest.approx(
        0.175, abs=0.01)
    assert inst.baseline_accuracy == pytest.approx(0.175 + 0.65 * 0.65)
    helpful = max(inst.pool, key=lambda r: r.effect)
    assert helpful.effect == pytest.approx(0.65 * 0.08)  # effects in score units


def test_subgroup_teacher_proposes_the_tempting_rule_first_and_its_conditional_form_right_after():
    inst = TASKS_BY_NAME["subgroup-tempting"].build(0)
    kinds = {r.kind: r for r in inst.pool}
    tempting, conditional = kinds["tempting"], kinds["helpful"]
    assert tempting.effect == pytest.approx(0.018) and conditional.effect == pytest.approx(0.198)
    both = inst.expected_accuracy(program_with(inst, [tempting, conditional]))
    assert both == pytest.approx(inst.expected_accuracy(program_with(inst, [tempting])))  # then it measures nothing
    world = inst.world
    by_category: dict[str, list] = {}
    for example in inst.trainset:
        by_category.setdefault(world.example(example.question).category, []).append(example)
    lm = inst.cd_teacher_lm()

    def proposed(examples) -> list[tuple[str, list[int]]]:
        mistakes = "\n".join(f"{i}: {e.question}" for i, e in enumerate(examples, 1))
        with dspy.context(lm=lm):
            analysis = dspy.Predict(induction_signature(4, 2))(task="`predict` outputs `answer`", rules_in_force="",
                                                               mistakes=mistakes, max_rules=4).analysis
        return [(r.rule, r.mistakes) for r in analysis.rules]

    rules = proposed([*by_category["hard"][:2], *by_category["groups"][:2]])
    assert rules[:2] == [(tempting.text, [3, 4]), (conditional.text, [3, 4])]
    assert tempting.text not in [r for r, _ in rules[2:]]
    without = [r for r, _ in proposed(by_category["hard"][:2])]
    assert conditional.text not in without and without[0] != tempting.text  # no subgroup: no concept, no priority
    record = report.RunRecord("subgroup-tempting", "x", 0, pool_harmful=1, pool_tempting=1)
    family.judge(record, program_with(inst, [tempting]), inst, threads=2)
    assert record.tempting_in_force == [tempting.text] and record.harmful_in_force == [] and record.bad_kept == 1


def test_misplacing_proposer_puts_rules_in_either_predictor_where_they_act_only_in_their_own():
    inst = TASKS_BY_NAME["misplaced-2pred"].build(0)
    lm = inst.proposer_lm()
    seen: dict[str, set[str]] = {}
    with dspy.context(lm=lm):
        for i in range(12):
            analysis = dspy.Predict(induction_signature(8, 2))(task="...", rules_in_force="", max_rules=8,
                                                               mistakes=f"1: Q{i} ...\n2: Q{i + 50} ...").analysis
            for rule in analysis.rules:
                seen.setdefault(next(r.field for r in inst.pool if r.text == rule.rule), set()).add(rule.predictor)
    assert seen == {"plan": {"plan", "answer.predict"}, "answer": {"plan", "answer.predict"}}
    plan_rule = next(r for r in inst.pool if r.kind == "helpful" and r.field == "plan")
    misplaced = program_with(inst, [plan_rule], where={plan_rule.text: "answer.predict"})
    assert inst.in_force(misplaced) == [] and inst.expected_accuracy(misplaced) == pytest.approx(0.35)
    assert inst.expected_accuracy(program_with(inst, [plan_rule])) == pytest.approx(0.55)
    plain = TASKS_BY_NAME["diffuse-2pred"].build(0).proposer_lm()
    with dspy.context(lm=plain):
        analysis = dspy.Predict(induction_signature(8, 2))(task="...", rules_in_force="", max_rules=8,
                                                           mistakes="1: Q1 ...").analysis
    pool = TASKS_BY_NAME["diffuse-2pred"].build(0).pool
    assert all(r.predictor == {"plan": "plan", "answer": "answer.predict"}[next(
        p.field for p in pool if p.text == r.rule)] for r in analysis.rules)


def test_multi_call_program_makes_five_lm_calls_per_run_and_rules_act_only_in_the_answer_step():
    inst = TASKS_BY_NAME["multi-call"].build(0)
    program = inst.program()
    assert [name for name, _ in program.named_predictors()] == ["think", "lookup", "answer.predict"]
    lm = inst.student_lm()
    examples = inst.testset[:40]
    base = evaluate(program, lm, examples)
    assert lm.engine.calls == 5 * len(examples) == NOTES_CALLS_PER_RUN * len(examples)
    helpful = max(inst.pool, key=lambda r: r.effect)
    in_think = program_with(inst, [helpful], where={helpful.text: "think"})
    assert inst.in_force(in_think) == [] and inst.expected_accuracy(in_think) == pytest.approx(0.40)
    assert evaluate(in_think, lm, examples) != base  # a prompt change upstream re-draws answers downstream
    in_answer = program_with(inst, [helpful])
    assert inst.in_force(in_answer) == [helpful] and inst.expected_accuracy(in_answer) == pytest.approx(0.60)
    assert evaluate(program, lm, examples) == base  # the same prompts give the same answers
    note = lm.history[-1]["messages"][-1]["content"]
    assert "plan-variant" in note  # the answer step reads the notes' variant tokens


def test_scale_200_mixes_helpful_harmful_and_neutral_rules():
    described = TASKS_BY_NAME["scale-200"].describe()
    kinds = [r["kind"] for r in described["pool"]]
    assert (kinds.count("helpful"), kinds.count("harmful"), kinds.count("neutral")) == (3, 2, 3)
    assert described["mode"] == "diffuse" and described["proposer"] == "blind"


def test_task_groups_pick_subsets_of_the_family():
    from benchmarks.commands.family import parse_tasks

    assert parse_tasks("issue14") == NEW_KINDS and parse_tasks("issue6") == [t.name for t in ISSUE6_TASKS]
    assert parse_tasks("today,issue14,today") == ["today", *NEW_KINDS] and len(parse_tasks(None)) == 16
    with pytest.raises(SystemExit, match="unknown tasks: nope"):
        parse_tasks("nope")


# -- the blind proposer ---------------------------------------------------------------------------------------------
POOL = [HELP, HARM, NEUTRAL, PLAN_HELP]
NAMES = {"plan": "plan", "answer": "answer.predict"}


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
@pytest.mark.parametrize("capped", [True, False], ids=["capped", "uncapped"])
def test_blind_proposer_answers_concept_distillations_teacher_signature(adapter, capped):
    lm = proposer_lm(POOL, seed=2, p_helpful=1.0, p_other=1.0, predictor_names=NAMES)
    signature = induction_signature(3, 2) if capped else InduceConcepts
    with dspy.context(lm=lm, adapter=adapter):
        analysis = dspy.Predict(signature)(task="...", rules_in_force="", mistakes="1: Q4 ...\n2: Q9 ...",
                                           max_rules=3).analysis
    assert lm.engine.calls == 1 and len(analysis.rules) == 3  # all four drawn, cut to max_rules
    by_text = {r.text: r for r in POOL}
    for rule in analysis.rules:
        assert rule.predictor == NAMES[by_text[rule.rule].field]
        assert 1 <= len(rule.mistakes) <= 2 and set(rule.mistakes) <= {1, 2}


def test_blind_proposer_answers_dspy_optimizers_signatures():
    lm = proposer_lm(POOL, seed=4, predictor_names=NAMES)
    with dspy.context(lm=lm):
        copro = dspy.Predict(BasicGenerateInstruction, n=2)(basic_instruction="Answer it.").completions
        simba = dspy.Predict(OfferFeedback)(
            program_code="", modules_defn="", program_inputs="{}", oracle_metadata="{}", worse_program_trajectory="[]",
            worse_program_outputs="{}", worse_reward_value=0.0, worse_reward_info="{}", better_program_trajectory="[]",
            better_program_outputs="{}", better_reward_value=1.0, better_reward_info="{}",
            module_names=["plan", "answer.predict"]).module_advice
        gepa = InstructionProposer()(candidate={"plan": "old"}, components_to_update=["plan"],
                                     reflective_dataset={"plan": [{"Inputs": {"question": "Q1"}, "Feedback": "No"}]})
    texts = [*copro.proposed_instruction, *simba.values(), gepa["plan"]]
    assert set(simba) == {"plan", "answer.predict"} and len(texts) == 5
    pool_texts = {r.text for r in POOL}
    for text in texts:
        assert {line[2:] for line in text.splitlines() if line.startswith("- ")} <= pool_texts
    assert lm.engine.calls == 4


def test_blind_proposer_is_blind_and_repeatable_in_any_call_order():
    engine = SimulatedProposerEngine(POOL, seed=5, p_helpful=0.4, p_other=0.4)
    draws = [set(engine.draw_rules(f"k{i}")) for i in range(3000)]
    for rule in POOL:  # helpful, harmful and neutral rules alike
        assert sum(rule.text in d for d in draws) / len(draws) == pytest.approx(0.4, abs=0.04)
    forward, backward = (SimulatedProposerEngine(POOL, seed=5) for _ in range(2))
    keys = ["a", "b", "a", "c", "b"]
    first = [(k, forward.draw_rules(k)) for k in keys]
    second = [(k, backward.draw_rules(k)) for k in reversed(keys)]  # the same requests in another order
    for key in set(keys):  # the n-th request with the same text gets the same draw
        assert [d for k, d in first if k == key] == [d for k, d in second if k == key]


# -- judges, summaries and the runner -------------------------------------------------------------------------------
def test_recall_harmful_rate_and_in_force_of_a_returned_program():
    inst = TASKS_BY_NAME["diffuse-issue"].build(0)
    helpful = [r for r in inst.pool if r.kind == "helpful"]
    harmful = next(r for r in inst.pool if r.kind == "harmful")
    program = with_instructions(inst.program(), predict=f"Solve. {helpful[0].text} {harmful.text.upper()}")
    record = report.RunRecord("diffuse-issue", "x", 0, pool_helpful=2, pool_harmful=1)
    family.judge(record, program, inst, threads=2)
    assert record.helpful_in_force == [helpful[0].text] and record.harmful_in_force == [harmful.text]
    assert (record.recall, record.harmful_rate) == (0.5, 1.0)
    assert record.oracle_accuracy == pytest.approx(0.4)  # +0.2 -0.2
    assert 0.3 < record.test_accuracy < 0.5


def test_mean_ci_and_reason_classes():
    mean, half = report.mean_ci([0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.303 * 0.2 / 3**0.5)
    assert report.mean_ci([0.5]) == (0.5, None)
    assert report.reason_kind("fixed none of the 2 training mistake(s) it was written for") == "screen"
    assert report.reason_kind("dropped in the race after 6/20 valset examples: ...") == "race (statistical bound)"


def row(task: str, optimizer: str, oracle: float, calls: float, *, runs: int = 10, below: int = 0,
        bad: int = 0, pairs: int = 20, generic: float | None = None) -> dict:
    return {"task": task, "optimizer": optimizer, "oracle_accuracy": oracle, "student_calls": calls, "runs_ok": runs,
            "below_baseline_runs": below, "below_baseline_share": below / runs,
            "harmful_or_tempting_kept": bad if pairs else None, "harmful_or_tempting_pairs": pairs,
            "harmful_or_tempting_share": bad / pairs if pairs else None, "generic_per_run": generic}


TARGET_KEYS = ("below_baseline", "harmful_or_tempting", "medium_vs_gepa", "light_vs_copro", "generic")


def test_targets_of_issue_14_pass_and_fail_with_shortfalls():
    tasks = {"t": {"oracle_accuracy": 0.8}}
    good = [row("t", "cd-light", 0.8, 120, generic=0.3), row("t", "cd-medium", 0.7, 276, generic=0.1),
            row("t", "copro", 0.8, 160), row("t", "gepa", 0.7, 460)]
    checks = report.targets(good, tasks)["t"]
    assert [checks[k]["status"] for k in TARGET_KEYS] == ["pass"] * 5
    bad = [row("t", "cd-light", 0.6, 130, below=1, generic=0.5), row("t", "cd-medium", 0.69, 277, bad=2),
           row("t", "copro", 0.8, 160), row("t", "gepa", 0.7, 460)]
    checks = report.targets(bad, tasks)["t"]
    assert [checks[k]["status"] for k in TARGET_KEYS] == ["fail"] * 5
    assert "cd-light 1/10 = 10% > 2%" in checks["below_baseline"]["detail"]
    assert "cd-medium 2/20 = 10% > 5%" in checks["harmful_or_tempting"]["detail"]
    medium = checks["medium_vs_gepa"]["detail"]
    assert "oracle 0.690 < 0.700 of GEPA light (-0.010)" in medium and "277 student calls > 276" in medium
    light = checks["light_vs_copro"]["detail"]
    assert "(-0.200)" in light and "130 student calls > 120 (0.75 x COPRO (4, 2)'s 160; +10)" in light
    assert "cd-light 0.50/run > 0.3 (+0.20)" in checks["generic"]["detail"]
    alone = report.targets([row("t", "cd-light", 0.8, 100, pairs=0)], tasks)["t"]
    assert {k: alone[k]["status"] for k in TARGET_KEYS} == {
        "below_baseline": "pass", "harmful_or_tempting": "n/a", "medium_vs_gepa": "n/a", "light_vs_copro": "n/a",
        "generic": "n/a"}


def run_record(seed: int, oracle: float, *, optimizer: str = "cd-light", test: float = 0.5, base_test: float = 0.5,
               valset: tuple[float, float] | None = None, harmful: int = 0, tempting: int = 0,
               generic: int = 0) -> report.RunRecord:
    return report.RunRecord(
        "t", optimizer, seed, oracle_accuracy=oracle, test_accuracy=test, baseline_test_accuracy=base_test,
        harmful_in_force=["H"] * harmful, tempting_in_force=["T"] * tempting, generic_in_force=["G"] * generic,
        pool_harmful=1, pool_tempting=1, pool_generic=7, valset_baseline=valset and valset[0],
        valset_final=valset and valset[1])


def test_summary_counts_runs_below_the_baseline_on_the_oracle_and_the_test_split():
    tasks = {"t": {"baseline_accuracy": 0.45, "oracle_accuracy": 0.65, "pool": []}}
    records = [run_record(0, 0.44, test=0.52), run_record(1, 0.45, test=0.49), run_record(2, 0.4499, test=0.5),
               run_record(3, 0.55, test=0.55)]
    (summary,) = report.summarize(records, tasks)
    assert (summary["below_baseline_runs"], summary["below_baseline_share"]) == (1, 0.25)  # 0.4499 is rounding
    assert (summary["below_baseline_test_runs"], summary["below_baseline_test_of"]) == (1, 4)
    assert summary["below_baseline_test_share"] == 0.25 and summary["baseline_test_accuracy"] == 0.5


def test_valset_optimism_is_the_reported_gain_minus_the_true_gain():
    tasks = {"t": {"baseline_accuracy": 0.45, "oracle_accuracy": 0.65, "pool": []}}
    records = [run_record(0, 0.55, valset=(0.5, 0.7)), run_record(1, 0.45, valset=(0.4, 0.5)),
               run_record(2, 0.6, optimizer="copro")]
    rows = {r["optimizer"]: r for r in report.summarize(records, tasks)}
    cd = rows["cd-light"]
    assert cd["valset_reported_gain"] == pytest.approx(0.15) and cd["true_gain"] == pytest.approx(0.05)
    assert cd["valset_optimism"] == pytest.approx(0.1) and cd["valset_optimism_runs"] == 2  # (0.1 + 0.1) / 2
    assert cd["valset_optimism_ci95"] == pytest.approx(0.0)
    assert rows["copro"]["valset_optimism"] is None and rows["copro"]["valset_reported_gain"] is None


def test_harmful_or_tempting_rules_count_per_run_rule_pair_and_generic_rules_per_run():
    tasks = {"t": {"baseline_accuracy": 0.45, "oracle_accuracy": 0.65, "pool": []}}
    records = [run_record(0, 0.5, harmful=1), run_record(1, 0.5, tempting=1, generic=2),
               run_record(2, 0.5, generic=1), run_record(3, 0.5)]
    (summary,) = report.summarize(records, tasks)
    assert (summary["harmful_or_tempting_kept"], summary["harmful_or_tempting_pairs"]) == (2, 8)
    assert summary["harmful_or_tempting_share"] == 0.25 and summary["generic_per_run"] == 0.75
    plain = report.summarize([report.RunRecord("t", "cd-light", 0, oracle_accuracy=0.5, pool_harmful=0)], tasks)[0]
    assert plain["harmful_or_tempting_share"] is None and plain["generic_per_run"] is None  # none in the pool


def test_seeds_are_reported_in_a_tuning_and_a_held_out_block():
    tasks = {"t": {"baseline_accuracy": 0.45, "oracle_accuracy": 0.65, "pool": []}}
    records = [run_record(seed, 0.4 if seed >= 10 else 0.6) for seed in (0, 9, 10, 29, 30)]
    rows = {r["block"]: r for r in report.summarize(records, tasks)}
    assert list(rows) == ["0-9", "10-29", "other"]
    assert rows["0-9"]["seeds"] == [0, 9] and rows["10-29"]["seeds"] == [10, 29] and rows["other"]["seeds"] == [30]
    assert rows["0-9"]["below_baseline_runs"] == 0 and rows["10-29"]["below_baseline_runs"] == 2
    checks = report.targets_by_block(list(rows.values()), tasks)
    assert checks["0-9"]["t"]["below_baseline"]["status"] == "pass"
    assert checks["10-29"]["t"]["below_baseline"]["status"] == "fail"
    assert [report.block_title(b) for b in checks] == ["seeds 0-9 (tuning)", "seeds 10-29 (held out)", "other seeds"]


def test_runner_reports_every_field_on_a_tiny_subset(tmp_path):
    out = tmp_path / "fam"
    assert cli.main(["family", "--tasks", "diffuse-issue", "--optimizers", "cd-light,copro", "--seeds", "0-1",
                        "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["meta"]["command"].endswith("--seeds 0-1 --out " + str(out))
    assert payload["meta"]["versions"]["dspy"].startswith("3.4") and payload["meta"]["library_revision"]
    assert payload["meta"]["harness_revision"]
    rows = {r["optimizer"]: r for r in payload["summary"]}
    assert set(rows) == {"cd-light", "copro"} and rows["copro"]["student_calls"] == 160  # COPRO (4, 2): 8 x 20
    for key in ("oracle_accuracy", "test_accuracy", "test_ci95", "helpful_recall", "harmful_acceptance",
                "helper_calls", "wall_seconds", "cpu_seconds", "baseline_test_accuracy", "below_baseline_runs",
                "below_baseline_test_runs", "valset_reported_gain", "true_gain", "valset_optimism",
                "harmful_or_tempting_share"):
        assert rows["cd-light"][key] is not None
    assert rows["copro"]["valset_optimism"] is None and rows["cd-light"]["generic_per_run"] is None
    assert rows["cd-light"]["runs_ok"] == 2 and rows["cd-light"]["helper_calls"] <= 6
    assert set(payload["targets"]) == {"0-9"} and set(payload["targets"]["0-9"]["diffuse-issue"]) == set(TARGET_KEYS)
    assert set(payload["baseline_test"]["diffuse-issue"]) == {"0", "1"}
    assert all(r["cd_rules"] and r["valset_final"] is not None for r in payload["runs"] if r["optimizer"] == "cd-light")
    md = out.with_suffix(".md").read_text()
    assert "## Targets (issue 14 Must 5), seeds 0-9 (tuning)" in md and "| cd-light |" in md
    assert "valset optimism" in md and "below baseline: oracle (test)" in md
    csv_text = out.with_suffix(".csv").read_text()
    assert csv_text.startswith("task,optimizer,block,") and "valset_optimism" in csv_text.splitlines()[0]


def test_missed_helpful_rules_are_explained_by_their_measured_reason():
    pool = [{"kind": "helpful", "rule": "A"}, {"kind": "helpful", "rule": "B"}, {"kind": "helpful", "rule": "C"},
            {"kind": "neutral", "rule": "N"}]
    run = report.RunRecord("t", "cd-medium", 0, helpful_in_force=["C"], pool_helpful=3, cd_rules=[
        {"pool_rule": 0, "kind": "helpful", "status": "rejected", "reason": "fixed none of the 1 training mistake(s)"},
        {"pool_rule": 0, "kind": "helpful", "status": "rejected", "reason": "near-duplicate of rule r1 (rejected)"},
        {"pool_rule": 2, "kind": "helpful", "status": "accepted", "reason": "raised the valset score"},
        {"pool_rule": 3, "kind": "neutral", "status": "rejected", "reason": "below min_gain"}])
    assert report.missed_helpful([run], pool) == {"screen": 1, "never proposed": 1}


def test_stored_runs_render_to_the_same_summary(tmp_path):
    out = tmp_path / "fam"
    cli.main(["family", "--tasks", "today-blind", "--optimizers", "cd-light", "--seeds", "3", "--out", str(out)])
    first = json.loads(out.with_suffix(".json").read_text())
    cli.main(["family", "--render", str(out.with_suffix(".json")), "--out", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["summary"] == first["summary"] and again["targets"] == first["targets"]
    assert again["meta"]["command"] == first["meta"]["command"] and "recomputed" in again["meta"]["rendered"]
    assert all(r.get("pool_rule") is None or "text" not in r or r["text"] != first["tasks"]["today-blind"]["pool"][
        r["pool_rule"]]["rule"] for r in first["runs"][0]["cd_rules"])


def test_cd_kwargs_reach_concept_distillation_and_reference_rows_fill_in(tmp_path):
    # 30 calls cannot race any rule after the trainset and baseline (40): that raises BudgetTooSmallError, unless
    # on_failure="return" asks for the unchanged program
    record = family.run_one("today", "cd-light", 0, cd_kwargs={"max_student_calls": 30, "on_failure": "return"})
    assert record.status == "ok" and record.student_calls <= 30
    reference = tmp_path / "ref.json"
    cli.main(["family", "--tasks", "today", "--optimizers", "copro", "--seeds", "0", "--out",
              str(reference.with_suffix(""))])
    out = tmp_path / "cd"
    cli.main(["family", "--tasks", "today", "--optimizers", "cd-light", "--seeds", "0", "--reference", str(reference),
                 "--out", str(out)])
    payload = json.loads(out.with_suffix(".json").read_text())
    sources = {r["optimizer"]: r["source"] for r in payload["summary"]}
    assert sources["cd-light"] == "this run" and sources["copro"].startswith("reference ")
    assert payload["targets"]["0-9"]["today"]["light_vs_copro"]["status"] in {"pass", "fail"}


def test_references_from_several_files_and_a_merged_reference_file(tmp_path):
    parts = []
    for optimizer, seeds in (("copro,cd-light", "0"), ("infer-rules", "0-1")):
        parts.append(tmp_path / f"{optimizer.replace(',', '_')}.json")
        cli.main(["family", "--tasks", "today", "--optimizers", optimizer, "--seeds", seeds, "--out",
                  str(parts[-1].with_suffix(""))])
    merged = tmp_path / "merged"
    assert cli.main(["family", "--merge", *map(str, parts), "--optimizers", "copro,infer-rules", "--out",
                     str(merged)]) == 0
    payload = json.loads(merged.with_suffix(".json").read_text())
    assert sorted((r["optimizer"], r["seed"]) for r in payload["runs"]) == [("copro", 0), ("infer-rules", 0),
                                                                           ("infer-rules", 1)]
    assert all(r["source"].startswith("reference ") for r in payload["runs"])
    assert [p["command"] for p in payload["meta"]["parts"]] == [json.loads(p.read_text())["meta"]["command"]
                                                                for p in parts]
    assert payload["meta"]["command"].startswith("python -m benchmarks family --merge")
    assert set(payload["baseline_test"]["today"]) == {"0", "1"}
    for references in ([merged.with_suffix(".json")], parts):
        out = tmp_path / "cd"
        cli.main(["family", "--tasks", "today", "--optimizers", "cd-light", "--seeds", "0-1", "--out", str(out),
                  *[arg for ref in references for arg in ("--reference", str(ref))]])
        runs = json.loads(out.with_suffix(".json").read_text())["runs"]
        assert sorted((r["optimizer"], r["seed"]) for r in runs) == [
            ("cd-light", 0), ("cd-light", 1), ("copro", 0), ("infer-rules", 0), ("infer-rules", 1)]
    changed = dataclasses.replace(TASKS_BY_NAME["today"], flip_rate=0.01)
    assert family.reference_records(merged.with_suffix(".json"), {("today", "copro", 0)},
                                    {"today": changed.describe()}) == []  # another task definition: not reused


def test_parallel_runs_match_sequential_ones():
    jobs = [("diffuse-issue", "cd-light", 1), ("today-blind", "cd-light", 2)]
    sequential = family.run_all(jobs, processes=1, cd_kwargs={}, threads=2)
    parallel = family.run_all(jobs, processes=2, cd_kwargs={}, threads=2)
    def essence(records: list) -> list:
        return [(r.task, r.seed, r.student_calls, r.helper_calls, r.oracle_accuracy, r.test_accuracy,
                 [(x["pool_rule"], x.get("text"), x["status"], x["reason"]) for x in r.cd_rules]) for r in records]

    assert essence(sequential) == essence(parallel)
    assert all(r.cd_rules for r in sequential)
