"""Verification's bookkeeping: which candidates are verified at all."""

from dspy_concept_distill.phases.verification import limit_candidates
from dspy_concept_distill.rules import Rule, RuleStatus, record_verdicts


def test_limit_candidates_keeps_the_first_in_the_teachers_order_and_says_why_the_rest_were_not_verified():
    rules = [Rule(f"Rule number {i} says something.", "p") for i in range(1, 5)]
    kept, verdicts = limit_candidates(list(rules), 2)
    assert [r.text for r in kept] == [rules[0].text, rules[1].text]
    assert [v.rule_id for v in verdicts] == [r.id for r in rules[2:]]
    assert all(r.status == RuleStatus.CANDIDATE for r in rules)  # a phase returns verdicts; it changes no rule
    record_verdicts(rules, verdicts)
    assert all(r.status == RuleStatus.REJECTED and "max_candidates=2" in r.reason for r in rules[2:])
    assert all(r.status == RuleStatus.CANDIDATE for r in rules[:2])
    assert limit_candidates(rules[:1], 2) == (rules[:1], [])
