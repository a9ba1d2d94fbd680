"""A result built directly from its fields, for the report's tests and the tracking tests."""

from __future__ import annotations

from dspy_concept_distill import RuleSet
from dspy_concept_distill.records import BatchReply, Mistake, Outcome, RoundSummary, Step, TrajectoryStep
from dspy_concept_distill.reporting.result import DistillationResult
from dspy_concept_distill.rules import Rule, RuleStatus
from dspy_concept_distill.runtime.ledger import Ledger

GARBAGE_PREDICTOR = "x" * 500
LONG_INPUT = "Q1 " + "long " * 300
GARBAGE_DIAGNOSIS = "garbage " * 200


def _mistake(mistake_id: str, question: str, gold: int, answer: str, round_: int = 0) -> Mistake:
    steps = [Step("solve", {"question": question}, {"answer": answer})]
    return Mistake(id=mistake_id, example_key=mistake_id, inputs={"question": question}, gold={"answer": gold},
                   outcome=Outcome(score=0.0, steps=steps), round=round_)


def _ledger() -> Ledger:
    ledger = Ledger()
    for _ in range(3):
        ledger.record("student", "mistakes", "openai/gpt-4o-mini", {"prompt_tokens": 1000, "completion_tokens": 50})
    ledger.record_cache_hit("student", "verification", "openai/gpt-4o-mini")
    ledger.record("teacher", "induction", "openai/gpt-4o", {"prompt_tokens": 2000, "completion_tokens": 500})
    return ledger


def make_result(**overrides) -> DistillationResult:
    """Two kept rules (the second ignored by the student and worth nothing once the first is in), a rule with a
    500-character garbage predictor name and markup in its text, and a rule that lost on the valset."""
    units = Rule("Convert every quantity to one unit first.", "solve", source_mistakes=["0-a", "0-b"],
                 status=RuleStatus.ACCEPTED, reason="raised the valset score by +0.200 over the 0 rule(s) in force",
                 gain=0.2, evaluated_on=20, round=0, batch=0, gain_ci=[0.05, 0.35], ablation_gain=0.15,
                 adherence={"where": "source mistakes", "examples": 2, "changed": 2, "fixed": 2, "ignored": False})
    leftover = Rule("Subtract what was given away before answering.", "solve", source_mistakes=["1-c"],
                    status=RuleStatus.ACCEPTED, reason="raised the valset score by +0.100 over the 1 rule(s) in force",
                    gain=0.1, evaluated_on=20, round=1, batch=0, gain_ci=[-0.02, 0.22], ablation_gain=0.0,
                    adherence={"where": "source mistakes", "examples": 1, "changed": 0, "fixed": 0, "ignored": True})
    garbage = Rule("Think <script>alert(1)</script> harder about it.", GARBAGE_PREDICTOR, source_mistakes=["1-c"],
                   status=RuleStatus.REJECTED, round=1, batch=0,
                   reason=f"targets unknown predictor {GARBAGE_PREDICTOR!r}; the program has ['solve']")
    words = Rule("Answer in words, never digits.", "solve", source_mistakes=["0-a"], status=RuleStatus.REJECTED,
                 reason="gain -0.050 on the valset is below min_gain 0.05", gain=-0.05, evaluated_on=20, round=0,
                 batch=0)
    fields = dict(
        baseline_score=0.5, final_score=0.8, ruleset=RuleSet([units, leftover]),
        rules=[garbage, words, units, leftover],
        mistakes=[_mistake("0-a", LONG_INPUT, 105, "112"), _mistake("0-b", "Q2", 97, "104"),
                  _mistake("1-c", "Q3", 7, "9", round_=1)],
        replies=[BatchReply(round=0, batch=0, mistake_ids=["0-b", "0-a"], diagnoses=["diag B", "diag A <b>units</b>"],
                            attempts=1),
                 BatchReply(round=1, batch=0, mistake_ids=["1-c"], diagnoses=[GARBAGE_DIAGNOSIS], attempts=1)],
        usage=_ledger(),
        rounds=[RoundSummary(1, 0.4, 2, 2, 1, 0.5, 0.7), RoundSummary(2, 0.6, 1, 2, 1, 0.7, 0.8)],
        trainset_size=20, valset_size=20, min_gain=0.05,
        budgets={"student_calls": 100, "teacher_calls": 10, "tokens": None, "cost_usd": 1.0},
        cost_estimate={"low": 0.001, "high": 0.01},
        trajectory=[TrajectoryStep(0, 0.5),
                    TrajectoryStep(1, 0.7, units.id, units.text, 0.2, (0.05, 0.35)),
                    TrajectoryStep(2, 0.8, leftover.id, leftover.text, 0.1, (-0.02, 0.22))],
    )
    fields.update(overrides)
    return DistillationResult(**fields)
