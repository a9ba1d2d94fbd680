import json
import random

import dspy
import pytest

from dspy_concept_distill.budget import Budget, Ledger
from dspy_concept_distill.induction import (
    BatchReply,
    LeakChecker,
    ask_teacher,
    make_batches,
    resolve_predictor,
    rules_from_replies,
    similar,
)
from dspy_concept_distill.mistakes import Mistake
from dspy_concept_distill.rules import CANDIDATE, REJECTED, Rule


def mistake(i: int, gold=57) -> Mistake:
    return Mistake(id=f"0-{i}", example_key=f"k{i}", inputs={"question": f"q{i}"}, gold={"answer": gold}, score=0.0)


def reply(batch: int, *rules: dict) -> BatchReply:
    return BatchReply(round=0, batch=batch, mistake_ids=[], rules=list(rules))


def test_paraphrases_are_near_duplicates_but_different_rules_are_not():
    assert similar("Convert every quantity to the same unit before combining them.",
                   "Before combining quantities, always convert them all to the same unit.")
    assert similar("When items are given away, eaten or sold, subtract what was given away before answering.",
                   "Always subtract what was given away, eaten or sold before you give the remaining amount.")
    assert not similar("Convert every quantity to the same unit.", "Round the final answer up to a whole number.")
    assert not similar("Show units.", "Show units and round every answer to two decimal places.")


def test_leak_checker_rejects_gold_answers_and_copied_inputs_only():
    train = [dspy.Example(question="A farmer has 17 cows and buys 25 more cows at the big market on Monday",
                          answer=42).with_inputs("question")]
    leaks = LeakChecker(train)
    assert "gold answer" in leaks.check("If unsure, answer 42.", [42])
    assert "gold answer" in leaks.check("The answer is 42.0 here.", ["42"])
    assert leaks.check("Round to 2 decimal places.", [2]) is None  # single digits are not evidence
    assert leaks.check("Answer yes or no.", ["yes"]) is None
    copied = leaks.check("Remember: has 17 cows and buys 25 more cows at the big market.", [7])
    assert copied and "8 consecutive words" in copied
    assert leaks.check("Add the animals bought to those already owned.", [42]) is None


def test_resolve_predictor_accepts_exact_and_unambiguous_names():
    names = ["plan", "solve.predict"]
    assert resolve_predictor("plan", names) == "plan"
    assert resolve_predictor("solve", names) == "solve.predict"
    assert resolve_predictor("`solve.predict`", names) == "solve.predict"
    assert resolve_predictor("nowhere", names) is None
    assert resolve_predictor("anything", ["predict"]) == "predict"


def test_make_batches_covers_all_mistakes_then_resamples():
    mistakes = [mistake(i) for i in range(7)]
    batches = make_batches(mistakes, per_batch=3, num_batches=3, rng=random.Random(0))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert {m.id for b in batches for m in b} == {m.id for m in mistakes}
    few = make_batches(mistakes[:2], per_batch=5, num_batches=3, rng=random.Random(0))
    assert len(few) == 3 and all(len(b) == 2 for b in few)
    assert make_batches([], per_batch=5, num_batches=3, rng=random.Random(0)) == []


def test_rules_from_replies_validates_merges_and_links_sources():
    batch0 = [mistake(1), mistake(2, gold=99)]
    batch1 = [mistake(3)]
    replies = [
        reply(0,
              {"predictor": "solve", "rule": "Convert every quantity to the same unit before combining them.",
               "mistakes": [2]},
              {"predictor": "ghost", "rule": "Do something.", "mistakes": [1]},
              {"predictor": "plan", "rule": "The answer is 99.", "mistakes": [2]},
              {"predictor": "plan", "rule": " ".join(["word"] * 70)},
              {"predictor": "plan", "rule": "mismakes"}),
        reply(1,
              {"predictor": "solve.predict",
               "rule": "Before combining quantities, always convert them all to the same unit.", "mistakes": [1]},
              {"predictor": "solve", "rule": "Convert every quantity to the same unit before combining them."}),
    ]
    known = [Rule(text="Check the plan for missing steps.", predictor="plan", status=REJECTED)]
    replies[1].rules.append({"predictor": "plan", "rule": "Check the plan for any missing steps."})
    rules = rules_from_replies(replies, [batch0, batch1], predictor_names=["plan", "solve.predict"],
                               leak_checker=LeakChecker([]), known_rules=known, round_index=0)
    by_text = {r.text: r for r in rules}
    kept = by_text["Convert every quantity to the same unit before combining them."]
    assert kept.status == CANDIDATE and kept.predictor == "solve.predict"
    assert set(kept.source_mistakes) == {"0-2", "0-3"}  # its own source plus the merged duplicate's
    assert kept.duplicates == ["Before combining quantities, always convert them all to the same unit."]
    assert "unknown predictor 'ghost'" in by_text["Do something."].reason
    assert "gold answer" in by_text["The answer is 99."].reason
    assert "too long" in by_text[" ".join(["word"] * 70)].reason
    assert "too short" in by_text["mismakes"].reason
    assert "rejected in round 0" in by_text["Check the plan for any missing steps."].reason
    assert len(rules) == 7  # the verbatim repeat in batch 1 is support for the first rule, not a new row


@pytest.mark.parametrize("proposal", [{"rule": ""}, {"predictor": "plan"}])
def test_empty_proposals_are_ignored(proposal):
    rules = rules_from_replies([reply(0, proposal)], [[mistake(1)]], predictor_names=["plan"],
                               leak_checker=LeakChecker([]), known_rules=[], round_index=0)
    assert rules == []


def test_near_misses_from_earlier_rounds_get_one_more_measurement():
    near_miss = Rule(text="Convert every quantity to the same unit first.", predictor="p", status=REJECTED, gain=0.0)
    loser = Rule(text="Round every final answer up to a whole number.", predictor="p", status=REJECTED, gain=-0.1)
    tried_twice = Rule(text="Subtract what was given away before answering.", predictor="p", status=REJECTED,
                       gain=0.02, attempts=2)
    proposals = [{"predictor": "p", "rule": r.text, "mistakes": [1]} for r in (near_miss, loser, tried_twice)]
    rules = rules_from_replies([reply(0, *proposals)], [[mistake(1)]], predictor_names=["p"],
                               leak_checker=LeakChecker([]), known_rules=[near_miss, loser, tried_twice],
                               round_index=1)
    assert [(r.status, r.attempts) for r in rules] == [(CANDIDATE, 2), (REJECTED, 1), (REJECTED, 1)]
    assert "rejected in round 0" in rules[1].reason and "rejected in round 0" in rules[2].reason


class SchemaStrictTeacher:
    """A scripted teacher engine (not a model) whose API refuses JSON schemas with `maxItems`, as some
    structured-output providers do, and otherwise answers with one rule."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "max_tokens"})

    def __init__(self):
        self.schemas = []

    def complete(self, request):
        from dspy.lm15 import InvalidRequestError, Message, Response, TextPart, Usage

        schema = json.dumps(request.config.response_format or {})
        self.schemas.append(schema)
        if "maxItems" in schema:
            raise InvalidRequestError("'maxItems' is not permitted")
        text = json.dumps({"analysis": {"diagnoses": ["units were mixed"], "rules": [
            {"predictor": "predict", "rule": "Convert all quantities to one unit first.", "mistakes": [1]}]}})
        return Response(id=None, model="strict", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=10, output_tokens=10))


def test_a_provider_that_refuses_the_capped_schema_gets_the_plain_one():
    engine = SchemaStrictTeacher()
    teacher = dspy.LM("strict/teacher", engine=engine, num_retries=0)
    dspy.configure(adapter=dspy.JSONAdapter())
    budget = Budget(Ledger(), None, None)
    reply = ask_teacher(teacher, task="Predictor `predict`", rules_in_force="(none yet)", batch=[mistake(1)],
                        max_rules=2, rollout=None, retries=1, budget=budget, round_index=0, batch_index=0,
                        rng=random.Random(0))
    assert reply.error is None and reply.attempts == 2
    assert reply.rules[0]["rule"] == "Convert all quantities to one unit first."
    assert "maxItems" in engine.schemas[0] and "maxItems" not in engine.schemas[-1]
