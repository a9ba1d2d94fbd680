"""The task family of ``python -m benchmarks family``: the simulated worlds behave as documented, the blind proposer
answers every optimizer's signatures (ConceptDistillation's teacher signature included), the judges compute oracle
accuracy, recall and harmful acceptance correctly, and the runner produces every report field."""

from __future__ import annotations

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
from benchmarks.harness.simulated.tasks import TASKS, TASKS_BY_NAME, _counts
from benchmarks.harness.simulated.worlds import DiffuseWorld, PlanThenAnswer, best_rule_set, stages_with
from dspy_concept_distill.phases.induction import InduceConcepts, induction_signature
from dspy_concept_distill.testing import SimulatedTask

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
    assert {t.predictors for t in TASKS} == {1, 2} and {t.n_val for t in TASKS} >= {20, 40, 100}
    assert min(t.flip_rate for t in TASKS) == 0 and max(t.flip_rate for t in TASKS) == pytest.approx(0.2)
    effects = {round(r.effect, 2) for t in TASKS for r in t.build(0).pool if r.kind == "helpful"}
    assert min(effects) <= 0.05 and max(effects) >= 0.25
    issue = TASKS_BY_NAME["diffuse-issue"].describe()
    assert (issue["baseline_accuracy"], issue["oracle_accuracy"]) == (0.4, 0.8)
    assert [r["kind"] for r in issue["pool"]].count("neutral") == 3 and issue["proposer"] == "blind"


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


def row(task: str, optimizer: str, oracle: float, calls: float, harmful: float = 0.0) -> dict:
    return {"task": task, "optimizer": optimizer, "oracle_accuracy": oracle, "student_calls": calls,
            "harmful_acceptance": harmful}


def test_targets_pass_and_fail_with_shortfalls():
    tasks = {"t": {"oracle_accuracy": 0.8}}
    good = [row("t", "cd-light", 0.8, 110), row("t", "cd-medium", 0.79, 150), row("t", "copro", 0.8, 160),
            row("t", "gepa", 0.7, 460)]
    checks = report.targets(good, tasks)["t"]
    assert [checks[k]["status"] for k in ("light_vs_dspy", "harmful", "medium_vs_oracle")] == ["pass"] * 3
    bad = [row("t", "cd-light", 0.6, 130, harmful=0.1), row("t", "cd-medium", 0.7, 150), row("t", "copro", 0.8, 160)]
    checks = report.targets(bad, tasks)["t"]
    assert checks["light_vs_dspy"]["status"] == "fail" and "-0.200" in checks["light_vs_dspy"]["detail"]
    assert "130 student calls > 120" in checks["light_vs_dspy"]["detail"]
    assert checks["harmful"]["status"] == "fail" and "cd-light 10%" in checks["harmful"]["detail"]
    assert checks["medium_vs_oracle"]["status"] == "fail"
    assert report.targets([row("t", "cd-light", 0.8, 100)], tasks)["t"]["light_vs_dspy"]["status"] == "n/a"


def test_runner_reports_every_field_on_a_tiny_subset(tmp_path):
    out = tmp_path / "fam"
    assert cli.main(["family", "--tasks", "diffuse-issue", "--optimizers", "cd-light,copro", "--seeds", "0-1",
                        "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    assert payload["meta"]["command"].endswith("--seeds 0-1 --out " + str(out))
    assert payload["meta"]["versions"]["dspy"].startswith("3.4") and payload["meta"]["library_revision"]
    rows = {r["optimizer"]: r for r in payload["summary"]}
    assert set(rows) == {"cd-light", "copro"} and rows["copro"]["student_calls"] == 160  # COPRO (4, 2): 8 x 20
    for key in ("oracle_accuracy", "test_accuracy", "test_ci95", "helpful_recall", "harmful_acceptance",
                "helper_calls", "wall_seconds", "cpu_seconds"):
        assert rows["cd-light"][key] is not None
    assert rows["cd-light"]["runs_ok"] == 2 and rows["cd-light"]["helper_calls"] <= 6
    assert set(payload["targets"]["diffuse-issue"]) == {"light_vs_dspy", "harmful", "medium_vs_oracle"}
    assert all(r["cd_rules"] for r in payload["runs"] if r["optimizer"] == "cd-light")
    md = out.with_suffix(".md").read_text()
    assert "## Targets" in md and "| cd-light |" in md and out.with_suffix(".csv").read_text().startswith("task,")


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
    assert payload["targets"]["today"]["light_vs_dspy"]["status"] in {"pass", "fail"}


def test_parallel_runs_match_sequential_ones():
    jobs = [("diffuse-issue", "cd-light", 1), ("today-blind", "cd-light", 2)]
    sequential = family.run_all(jobs, processes=1, cd_kwargs={}, threads=2)
    parallel = family.run_all(jobs, processes=2, cd_kwargs={}, threads=2)
    def essence(records: list) -> list:
        return [(r.task, r.seed, r.student_calls, r.helper_calls, r.oracle_accuracy, r.test_accuracy,
                 [(x["pool_rule"], x.get("text"), x["status"], x["reason"]) for x in r.cd_rules]) for r in records]

    assert essence(sequential) == essence(parallel)
    assert all(r.cd_rules for r in sequential)
