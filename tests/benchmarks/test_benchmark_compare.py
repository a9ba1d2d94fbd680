"""The machinery of ``python -m benchmarks compare`` (benchmarks/harness/simulated/compare.py): the scripted proposer
answers the signatures DSPy's optimizers send it with parseable, type-valid, fairly random instructions, and the
benchmark counts student calls during compile only, records failures instead of crashing, and judges rule sets and
the claim correctly."""

from __future__ import annotations

from typing import Any, Literal

import dspy
import pytest
from dspy.teleprompt.copro_optimizer import BasicGenerateInstruction, GenerateInstructionGivenAttempts
from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer
from dspy.teleprompt.infer_rules import RulesInductionProgram
from dspy.teleprompt.simba_utils import OfferFeedback
from gepa.strategies.instruction_proposal import InstructionProposalSignature

from benchmarks.harness.simulated import compare as bench
from benchmarks.harness.simulated.proposer import BASE_INSTRUCTION, SimulatedProposerEngine, world_pool
from benchmarks.harness.simulated.proposer import proposer_lm as pool_proposer_lm
from dspy_concept_distill.settings import PRESETS
from dspy_concept_distill.testing import SimulatedWorld


def proposer_lm(world: SimulatedWorld, seed: int = 0) -> dspy.LM:
    """The proposer the comparison gives DSPy's optimizers."""
    return pool_proposer_lm(world_pool(world), seed=seed, p_helpful=bench.P_HELPFUL, p_other=bench.P_DISTRACTOR)


def world_rules(world: SimulatedWorld) -> set[str]:
    return {c.rule for c in world.concepts} | {d.rule for d in world.distractors}


def rules_listed(instruction: str) -> list[str]:
    return [line[2:] for line in instruction.splitlines() if line.startswith("- ")]


def test_copro_signatures_get_one_parseable_instruction_per_requested_completion(world):
    lm = proposer_lm(world, seed=1)
    with dspy.context(lm=lm):
        first = dspy.Predict(BasicGenerateInstruction, n=3, temperature=1.4)(basic_instruction="Answer it.")
        later = dspy.Predict(GenerateInstructionGivenAttempts, n=4)(attempted_instructions=["Instruction #1: x"])
    instructions = first.completions.proposed_instruction + later.completions.proposed_instruction
    assert len(instructions) == 7 and lm.engine.calls == 7 and len(lm.engine.proposals) == 7
    for text, drawn in zip(instructions, lm.engine.proposals, strict=True):
        assert text.startswith(BASE_INSTRUCTION)
        assert rules_listed(text) == list(drawn) and set(drawn) <= world_rules(world)
    assert set(first.completions.proposed_prefix_for_output_field) == {"Answer:"}  # a prefix carries no rule


def test_infer_rules_gets_a_numbered_list_of_world_rules(world):
    lm = proposer_lm(world, seed=2)
    with dspy.context(lm=lm):
        rules = RulesInductionProgram(num_rules=10)("Input Fields:\nquestion: Q1: ...\n")
    lines = rules.splitlines()
    assert lines and all(line.startswith(f"{i}. ") for i, line in enumerate(lines, 1))
    listed = {line.split(". ", 1)[1] for line in lines}
    assert listed <= world_rules(world) | {"State the final number clearly."}
    assert lm.engine.calls == 1  # parsed on the first try: no JSONAdapter fallback call


class Typed(dspy.Signature):
    """Exercise every kind of output type hint."""

    module_names: list[str] = dspy.InputField()
    new_instruction: str = dspy.OutputField()
    summary: str = dspy.OutputField()
    rules: list[str] = dspy.OutputField()
    advice: dict[str, str] = dspy.OutputField()
    count: int = dspy.OutputField()
    weight: float = dspy.OutputField()
    done: bool = dspy.OutputField()
    mode: Literal["fast", "slow"] = dspy.OutputField()
    maybe: int | None = dspy.OutputField()


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_any_signature_gets_type_valid_values_in_the_adapters_format(world, adapter):
    lm = proposer_lm(world)
    with dspy.context(lm=lm, adapter=adapter):
        out = dspy.Predict(Typed)(module_names=["plan", "solve.predict"])
    assert lm.engine.calls == 1
    assert out.new_instruction.startswith(BASE_INSTRUCTION)
    assert not any(rule in out.summary for rule in world_rules(world))
    assert out.rules and set(out.rules) <= world_rules(world) | {"State the final number clearly."}
    assert set(out.advice) == {"plan", "solve.predict"}  # dict keys come from the module names given
    assert all(v.startswith(BASE_INSTRUCTION) for v in out.advice.values())
    assert (out.count, out.weight, out.done, out.mode, out.maybe) == (3, 0.5, True, "fast", 3)


def test_simba_and_gepa_proposal_prompts(world):
    lm = proposer_lm(world, seed=3)
    with dspy.context(lm=lm):
        advice = dspy.Predict(OfferFeedback)(
            program_code="", modules_defn="", program_inputs="{}", oracle_metadata="{}",
            worse_program_trajectory="[]", worse_program_outputs="{}", worse_reward_value=0.0, worse_reward_info="{}",
            better_program_trajectory="[]", better_program_outputs="{}", better_reward_value=1.0,
            better_reward_info="{}", module_names=["predict"],
        ).module_advice
        proposed = InstructionProposer()(  # dspy.GEPA's default proposer (JSONAdapter)
            candidate={"predict": "old"}, components_to_update=["predict"],
            reflective_dataset={"predict": [{"Inputs": {"question": "Q1"}, "Feedback": "Incorrect"}]},
        )
    assert list(advice) == ["predict"] and advice["predict"].startswith(BASE_INSTRUCTION)
    assert proposed["predict"].startswith(BASE_INSTRUCTION)
    # the standalone gepa package's plain reflection prompt: the instruction comes back inside a fenced block
    reply = lm("I provided an assistant with the following instructions ... Provide the new instructions within ```")
    extracted = InstructionProposalSignature.output_extractor(reply[0])["new_instruction"]
    assert extracted.startswith(BASE_INSTRUCTION) and "```" not in extracted
    assert lm.engine.calls == 3


def test_proposals_are_fair_random_draws_repeatable_by_seed(world):
    engine = SimulatedProposerEngine(world_pool(world), seed=11, p_helpful=0.5, p_other=0.3)
    draws = [set(engine.draw_rules()) for _ in range(3000)]
    for concept in world.concepts:
        assert sum(concept.rule in d for d in draws) / len(draws) == pytest.approx(0.5, abs=0.04)
    for distractor in world.distractors:
        assert sum(distractor.rule in d for d in draws) / len(draws) == pytest.approx(0.3, abs=0.04)
    best = sum(bench.is_best_set(world, "\n".join(d)) for d in draws) / len(draws)
    assert best == pytest.approx(0.5**3 * 0.7**2, abs=0.02)  # reachable by search, never handed over
    again = SimulatedProposerEngine(world_pool(world), seed=11, p_helpful=0.5, p_other=0.3)
    other = SimulatedProposerEngine(world_pool(world), seed=12, p_helpful=0.5, p_other=0.3)
    assert [again.draw_rules() for _ in range(20)] == [list(engine.proposals[i]) for i in range(20)]
    assert [other.draw_rules() for _ in range(20)] != [list(engine.proposals[i]) for i in range(20)]


def test_rule_judging_matches_the_simulated_student(world):
    helpful = " ".join(c.rule for c in world.concepts)
    assert bench.is_best_set(world, helpful)
    assert bench.is_best_set(world, helpful + " Read the problem carefully before answering.")  # neutral is fine
    assert not bench.is_best_set(world, helpful + " Always round the final answer up to the next whole number.")
    assert not bench.is_best_set(world, " ".join(c.rule for c in world.concepts[1:]))
    found, harmful, neutral = bench.rules_in(world, "Answer with the number written out in words. SAME   UNIT")
    assert (found, harmful, neutral) == (["units"], ["written out in words"], [])


def test_student_calls_are_counted_during_compile_only():
    spec = next(s for s in bench.EXTRA_SPECS if s.key == "copro_min")  # breadth 2, depth 1: 2 prompts x 20 train
    record = bench.run_one(spec, seed=0, num_threads=2)
    assert record.status == "ok"
    assert record.student_calls == 40  # the 20 valset runs of the final scoring are not counted
    assert record.helper_calls == 1 and record.proposals == 1
    assert record.val_score is not None and 0.0 <= record.val_score <= 1.0


def test_our_optimizer_row_finds_the_best_rule_set_below_copro_cost():
    ours = next(s for s in bench.SPECS if s.key == bench.OURS)
    record = bench.run_one(ours, seed=0, num_threads=2)
    assert record.found_best and record.val_score == pytest.approx(1.0)
    assert sorted(record.helpful_present) == ["groups", "leftover", "units"] and not record.harmful_present
    assert 0 < record.student_calls < 160
    assert record.helper_calls == PRESETS["light"].num_batches  # one teacher call per batch, each parsed at once


def test_infer_rules_row_logs_its_own_best_score():
    spec = next(s for s in bench.EXTRA_SPECS if s.key == "infer_rules_min")
    record = bench.run_one(spec, seed=0, num_threads=2)
    assert record.student_calls == 40 and record.helper_calls == 2
    assert record.logged_best_score is not None and 0.0 <= record.logged_best_score <= 1.0


def test_a_failing_optimizer_is_recorded_not_raised():
    def broken(ctx: bench.RunContext) -> dspy.Module:
        ctx.program(question=ctx.trainset[0].question)  # one real student call, then a failure
        raise RuntimeError("optimizer exploded")

    spec = bench.OptimizerSpec("broken", "Broken", "-", None, False, broken)
    record = bench.run_one(spec, seed=0)
    assert record.status == "error" and record.error == "RuntimeError: optimizer exploded"
    assert record.student_calls == 1 and record.val_score is None and not record.found_best


def test_sampling_student_adds_variance_only_when_sampled(world):
    train = world.make_examples({"plain": 6})
    calm = dspy.LM("simulated/student", engine=bench.SamplingStudentEngine(world, noise=1.0), cache=False)
    program = dspy.Predict("question -> answer: float")
    with dspy.context(lm=calm):
        default = [world.metric(ex, program(**ex.inputs())) for ex in train]
    with dspy.context(lm=calm.copy(rollout_id=1, temperature=1.0)):
        sampled = [world.metric(ex, program(**ex.inputs())) for ex in train]
    assert default == [True] * 6 and sampled == [False] * 6  # noise=1.0 flips every sampled answer
    assert calm.engine.calls == 12 and calm.engine.sampled_calls == 6


def record(key: str, seed: int, calls: int, found: bool = False) -> bench.RunRecord:
    return bench.RunRecord(key, key, seed, student_calls=calls, helper_calls=1, val_score=1.0 if found else 0.4,
                           found_best=found)


def specs(*keys: str) -> list[bench.OptimizerSpec]:
    def never(ctx: Any) -> dspy.Module:
        raise AssertionError

    return [bench.OptimizerSpec(k, k, "-", 100 if k != bench.OURS else None, k != bench.OURS, never) for k in keys]


def test_summary_ratios_and_claim_verdict():
    runs = [record(bench.OURS, 0, 50, found=True), record("a", 0, 100), record("b", 0, 200, found=True),
            record(bench.OURS, 1, 80, found=True), record("a", 1, 160), record("b", 1, 40)]
    summary = bench.summarize(specs(bench.OURS, "a", "b"), runs, [0, 1])
    rows = {row["key"]: row for row in summary["rows"]}
    assert rows["a"]["ours_ratio_per_seed"] == {0: 0.5, 1: 0.5}
    assert rows["b"]["ours_ratio_per_seed"] == {0: 0.25, 1: 2.0}
    assert rows["b"]["ours_ratio_mean"] == pytest.approx(1.125)
    assert rows["b"]["found_best"] == 1 and rows["a"]["matches_claim"] is False
    per_seed = summary["claim"]["per_seed"]
    assert per_seed[0]["holds"] and per_seed[0]["cheapest"] == "a"
    assert not per_seed[1]["holds"] and per_seed[1]["cheapest_calls"] == 40  # b was cheaper than us on seed 1
    assert summary["claim"]["holds"] is False
    full, terminal = bench.markdown(summary, runs, {"seeds": [0, 1], "flip_rate": 0.0, "notes": ["n"], "n_train": 20,
                                                    "n_val": 20,
                                                    "versions": {"dspy": "x", "gepa": "y", "optuna": "z"},
                                                    "proposer": {"p_helpful": 0.5, "p_distractor": 0.3}})
    assert "does not hold on every seed" in terminal and terminal in full
    assert "| b *(extra)*" not in terminal and "| b | 100 | 120.0 | 200, 40 |" in terminal


def test_claim_fails_when_we_do_not_find_the_best_set():
    runs = [record(bench.OURS, 0, 50, found=False), record("a", 0, 100)]
    assert bench.summarize(specs(bench.OURS, "a"), runs, [0])["claim"]["holds"] is False
