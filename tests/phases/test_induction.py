import json
import logging
import random

import dspy
import pytest

from dspy_concept_distill.phases.dedupe import similar
from dspy_concept_distill.phases.induction import TeacherBrief, ask_teacher, make_batches
from dspy_concept_distill.phases.proposals import resolve_predictor, rules_from_replies
from dspy_concept_distill.phases.rule_checks import LeakChecker, label_vocabulary
from dspy_concept_distill.records import BatchReply, Mistake, Outcome, Proposal, Step
from dspy_concept_distill.rules import (
    MAX_RULE_CHARS,
    MAX_RULES_CHARS_PER_PREDICTOR,
    Rule,
    RuleStatus,
    record_verdicts,
)
from tests.helpers import PlanAndSolve


def mistake(i: int, gold=57, field: str = "answer") -> Mistake:
    return Mistake(id=f"0-{i}", example_key=f"k{i}", inputs={"question": f"q{i}"}, gold={field: gold},
                   outcome=Outcome(score=0.0))


def reply(batch: int, *rules: dict) -> BatchReply:
    """A teacher reply proposing ``rules`` (each in the teacher's shape: ``{"predictor", "rule", "mistakes"}``)."""
    return BatchReply(round=0, batch=batch, mistake_ids=[], rules=[Proposal.from_dict(r) for r in rules])


def proposed_rules(*args, **kwargs) -> list[Rule]:
    """``rules_from_replies`` with its verdicts written into the rules, as the optimizer does at the end of phase 2."""
    rules, verdicts = rules_from_replies(*args, **kwargs)
    record_verdicts(rules, verdicts)
    return rules


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
    assert "gold answer" in leaks.check("If unsure, answer 42.", [{"answer": 42}])
    assert "gold answer" in leaks.check("The answer is 42.0 here.", [{"answer": "42"}])
    assert leaks.check("Round to 2 decimal places.", [{"answer": 2}]) is None  # single digits are not evidence
    assert leaks.check("Answer yes or no.", [{"answer": "yes"}]) is None
    copied = leaks.check("Remember: has 17 cows and buys 25 more cows at the big market.", [{"answer": 7}])
    assert copied and "8 consecutive words" in copied
    assert leaks.check("Add the animals bought to those already owned.", [{"answer": 42}]) is None


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
    known = [Rule(text="Check the plan for missing steps.", predictor="plan", status=RuleStatus.REJECTED)]
    replies[1].rules.append(Proposal("plan", "Check the plan for any missing steps."))
    rules = proposed_rules(replies, [batch0, batch1], predictor_names=["plan", "solve.predict"],
                               leak_checker=LeakChecker([]), known_rules=known, round_index=0)
    by_text = {r.text: r for r in rules}
    kept = by_text["Convert every quantity to the same unit before combining them."]
    assert kept.status == RuleStatus.CANDIDATE and kept.predictor == "solve.predict"
    assert set(kept.source_mistakes) == {"0-2", "0-3"}  # its own source plus the merged duplicate's
    assert kept.duplicates == ["Before combining quantities, always convert them all to the same unit."]
    assert "unknown predictor 'ghost'" in by_text["Do something."].reason
    assert "gold answer" in by_text["The answer is 99."].reason
    assert "too long" in by_text[" ".join(["word"] * 70)].reason
    assert "too short" in by_text["mismakes"].reason
    assert "rejected in round 1" in by_text["Check the plan for any missing steps."].reason
    assert len(rules) == 7  # the verbatim repeat in batch 1 is support for the first rule, not a new row


@pytest.mark.parametrize("proposal", [{"rule": ""}, {"predictor": "plan"}])
def test_empty_proposals_are_ignored(proposal):
    rules = proposed_rules([reply(0, proposal)], [[mistake(1)]], predictor_names=["plan"],
                               leak_checker=LeakChecker([]), known_rules=[], round_index=0)
    assert rules == []


def test_near_misses_from_earlier_rounds_get_one_more_measurement_on_fresh_evidence_only():
    near_miss = Rule(text="Convert every quantity to the same unit first.", predictor="p",
                     status=RuleStatus.REJECTED, gain=0.05, evaluated_on=20)
    loser = Rule(text="Round every final answer up to a whole number.", predictor="p", status=RuleStatus.REJECTED,
                 gain=-0.1, evaluated_on=20)
    tried_twice = Rule(text="Subtract what was given away before answering.", predictor="p", status=RuleStatus.REJECTED,
                       gain=0.02, evaluated_on=20, attempts=2)
    stale = Rule(text="Write the final number without any units.", predictor="p", status=RuleStatus.REJECTED, gain=0.05,
                 evaluated_on=20)  # raced against the rules in force now: the cache would answer the same
    known = [near_miss, loser, tried_twice, stale]
    proposals = [{"predictor": "p", "rule": r.text, "mistakes": [1]} for r in known]
    rules = proposed_rules([reply(0, *proposals)], [[mistake(1)]], predictor_names=["p"],
                               leak_checker=LeakChecker([]), known_rules=known, round_index=1,
                               fresh=lambda rule: rule is not stale)
    assert [(r.status, r.attempts) for r in rules] == [(RuleStatus.CANDIDATE, 2), (RuleStatus.REJECTED, 1),
                                                        (RuleStatus.REJECTED, 1), (RuleStatus.REJECTED, 1)]
    assert all("rejected in round 1" in r.reason for r in rules[1:])


def ask(teacher: dspy.LM, batch: list[Mistake], *, max_rules: int, retries: int) -> BatchReply:
    """One teacher call on a one-predictor task, first batch of round 0, no budget."""
    brief = TeacherBrief(task="Predictor `predict`", rules_in_force="(none yet)", max_rules=max_rules,
                         retries=retries, round_index=0)
    return ask_teacher(teacher, brief, batch, batch_index=0, rollout=None, rng=random.Random(0))


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
    reply = ask(teacher, [mistake(1)], max_rules=2, retries=1)
    assert reply.error is None and reply.attempts == 2
    assert reply.rules[0].text == "Convert all quantities to one unit first."
    assert "maxItems" in engine.schemas[0] and "maxItems" not in engine.schemas[-1]


# -- leak check: label vocabulary vs leaked answers ------------------------------------------------------------------

def examples(field: str, golds: list, input_field: str = "text") -> list[dspy.Example]:
    return [dspy.Example(**{input_field: f"example number {i}", field: g}).with_inputs(input_field)
            for i, g in enumerate(golds)]


SENTIMENT = examples("sentiment", ["positive", "negative", "negative", "positive", "positive", "negative"])
TRIAGE = examples("label", ["billing", "technical", "billing", "account", "technical", "billing", "account"])
MULTIARITH = examples("answer", [347, 42.0, 15, 128, 63, 2, 120, 15, 3.5, 75], input_field="question")


def test_labels_of_a_classification_task_may_be_named_in_a_rule():
    leaks = LeakChecker(SENTIMENT)
    assert leaks.check("Answer with exactly one lowercase word: positive or negative.",
                       [{"sentiment": "positive"}, {"sentiment": "negative"}]) is None
    triage = LeakChecker(TRIAGE)
    assert triage.check("If the ticket is about money, the label is billing.", [{"label": "billing"}]) is None
    assert triage.check("Login and password problems are labelled account.", [{"label": "account"}]) is None


def test_a_label_seen_once_is_vocabulary_when_its_field_is_a_small_label_set():
    train = examples("label", ["billing"] * 4 + ["technical"] * 3 + ["account"])
    assert label_vocabulary(train)["label"] == {"billing", "technical", "account"}
    assert LeakChecker(train).check("Password resets are labelled account.", [{"label": "account"}]) is None
    # three examples with three different labels: nothing shows a label set, so each value is tied to one example
    tiny = examples("label", ["billing", "technical", "account"])
    assert label_vocabulary(tiny) == {"label": set()}
    assert "gold answer 'account'" in LeakChecker(tiny).check("Password resets are account.", [{"label": "account"}])


def test_an_answer_tied_to_one_example_still_leaks():
    capitals = examples("answer", ["Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Paris"], input_field="question")
    leaks = LeakChecker(capitals)
    assert "gold answer 'Berlin'" in leaks.check("For Germany the answer is Berlin.", [{"answer": "Berlin"}])
    assert leaks.check("When the question is about France, answer Paris.", [{"answer": "Paris"}]) is None
    assert label_vocabulary(capitals)["answer"] == {"paris"}  # shared by two examples; six values are no label set


def test_numeric_answers_leak_unless_their_field_is_a_label_set():
    leaks = LeakChecker(MULTIARITH)
    assert "gold answer '347'" in leaks.check("If unsure, answer 347.", [{"answer": 347.0}])
    assert "gold answer" in leaks.check("The total is 120.0 here.", [{"answer": 120}])
    assert "gold answer" in leaks.check("Write 3.5 for half of seven.", [{"answer": 3.5}])
    # shared by two problems, but arithmetic answers coincide by chance: a number outside a label set always leaks
    assert "gold answer '15'" in leaks.check("Most answers are 15.", [{"answer": 15}])
    assert leaks.check("Round to 2 decimal places.", [{"answer": 2}]) is None  # small integers are not evidence
    assert label_vocabulary(MULTIARITH) == {"answer": set()}
    status = examples("status", [404, 200, 500, 404, 200, 200, 500, 404])
    assert label_vocabulary(status)["status"] == {404.0, 200.0, 500.0}
    assert LeakChecker(status).check("A missing page gets status 404.", [{"status": 404}]) is None


def test_multi_word_and_list_valued_golds():
    multi = examples("label", ["Billing Issue", "technical problem", "billing issue", "technical problem"])
    assert label_vocabulary(multi)["label"] == {"billing issue", "technical problem"}
    assert LeakChecker(multi).check("Refund requests are a billing issue.", [{"label": "billing issue"}]) is None
    people = examples("answer", ["Leonardo  da Vinci", "Marie Curie", "Ada Lovelace"], input_field="question")
    assert "gold answer" in LeakChecker(people).check("The painter is Leonardo da\nVinci.",
                                                      [{"answer": "Leonardo  da Vinci"}])
    tags = examples("tags", [["billing", "urgent"], ["technical"], ["billing"], ["urgent", "account"], ["technical"]])
    leaks = LeakChecker(tags)
    assert leaks.check("Outages are technical and urgent.", [{"tags": ["technical", "urgent"]}]) is None
    aliases = examples("answers", [["Paris", "City of Light"], ["Berlin"], ["Rome", "Eternal City"]])
    reason = LeakChecker(aliases).check("Call it the Eternal City.", [{"answers": ["Rome", "Eternal City"]}])
    assert "gold answer 'Eternal City'" in reason


def test_rules_from_replies_accepts_a_rule_that_names_the_labels():
    batch = [mistake(1, gold="billing", field="label")]
    proposal = {"predictor": "predict", "rule": "If the ticket is about money, the label is billing."}
    rules = proposed_rules([reply(0, proposal)], [batch], predictor_names=["predict"],
                               leak_checker=LeakChecker(TRIAGE), known_rules=[], round_index=0)
    assert [r.status for r in rules] == [RuleStatus.CANDIDATE]


# -- length caps -----------------------------------------------------------------------------------------------------

def test_a_rule_with_a_huge_token_is_rejected_by_its_length_in_characters():
    text = "Always answer " + "x" * 10_000
    rules = proposed_rules([reply(0, {"predictor": "p", "rule": text})], [[mistake(1)]], predictor_names=["p"],
                               leak_checker=LeakChecker([]), known_rules=[], round_index=0)
    (rule,) = rules
    assert rule.status == RuleStatus.REJECTED
    assert f"at most {MAX_RULE_CHARS} characters" in rule.reason and "10,014" in rule.reason
    assert len(rule.text) <= MAX_RULE_CHARS + 1 and rule.text.endswith("…")
    at_cap = "Answer " + "y" * (MAX_RULE_CHARS - 17) + " in words."
    assert len(at_cap) == MAX_RULE_CHARS
    ok = proposed_rules([reply(0, {"predictor": "p", "rule": at_cap})], [[mistake(1)]], predictor_names=["p"],
                            leak_checker=LeakChecker([]), known_rules=[], round_index=0)
    assert ok[0].status == RuleStatus.CANDIDATE


def test_a_candidate_that_would_overflow_its_predictors_rule_text_is_rejected():
    filler = "Check that every quantity in the plan has a unit attached " + "q" * 300 + " before solving"
    in_force = [Rule(text=f"{filler} {i}.", predictor="plan", status=RuleStatus.ACCEPTED)
                for i in range(MAX_RULES_CHARS_PER_PREDICTOR // len(filler))]
    rejected_earlier = Rule(text="r" * 390 + " never counts.", predictor="plan", status=RuleStatus.REJECTED)
    room = MAX_RULES_CHARS_PER_PREDICTOR - sum(len(r.text) for r in in_force)
    text = "Name the unit of the final answer " + "u" * room + " always."
    fits = "Write the unit after the number in every answer."
    proposals = [{"predictor": "plan", "rule": text}, {"predictor": "solve", "rule": text},
                 {"predictor": "plan", "rule": fits}]
    rules = proposed_rules([reply(0, *proposals)], [[mistake(1)]], predictor_names=["plan", "solve"],
                               leak_checker=LeakChecker([]), known_rules=[*in_force, rejected_earlier],
                               round_index=1)
    assert len(text) <= MAX_RULE_CHARS and len(fits) <= room < len(fits) + len(rejected_earlier.text)
    assert rules[0].status == RuleStatus.REJECTED
    assert f"MAX_RULES_CHARS_PER_PREDICTOR={MAX_RULES_CHARS_PER_PREDICTOR}" in rules[0].reason
    # the other predictor's; rejected rules take no room
    assert [r.status for r in rules[1:]] == [RuleStatus.CANDIDATE, RuleStatus.CANDIDATE]


# -- garbage teacher text stays short --------------------------------------------------------------------------------

def test_garbage_predictor_names_and_quoted_text_are_clipped():
    garbage = "junk " * 100
    long_gold = "g" * 300
    batch = [mistake(1, gold=long_gold)]
    copied = " ".join(f"w{i}" + "x" * 40 for i in range(8))
    train = [dspy.Example(q=f"so {copied} end", answer=long_gold).with_inputs("q")]
    proposals = [{"predictor": garbage, "rule": "Convert every quantity to the same unit."},
                 {"predictor": "plan", "rule": f"Never answer {long_gold} at all."},
                 {"predictor": "plan", "rule": f"Say {copied} always."}]
    rules = proposed_rules([reply(0, *proposals)], [batch], predictor_names=["plan", "solve"],
                               leak_checker=LeakChecker(train), known_rules=[], round_index=0)
    unknown, leak, copy = rules
    assert unknown.status == RuleStatus.REJECTED and unknown.predictor == garbage[:60].strip() + "…"
    assert "unknown predictor" in unknown.reason and len(unknown.reason) < 160
    assert "gold answer" in leak.reason and len(leak.reason) < 200
    assert "consecutive words" in copy.reason and len(copy.reason) < 200


# -- over-long teacher lists are truncated ---------------------------------------------------------------------------

class ScriptedTeacher:
    """A scripted teacher engine (not a model): answers every call with the same analysis, formatted for the
    adapter in use, and records the JSON schema it was sent."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "temperature", "max_tokens"})

    def __init__(self, analysis: dict, chat: bool):
        self.analysis, self.chat, self.schemas = analysis, chat, []

    def complete(self, request):
        from dspy.lm15 import Message, Response, TextPart, Usage

        self.schemas.append(json.dumps(request.config.response_format or {}))
        if self.chat:
            text = f"[[ ## analysis ## ]]\n{json.dumps(self.analysis)}\n\n[[ ## completed ## ]]"
        else:
            text = json.dumps({"analysis": self.analysis})
        return Response(id=None, model="scripted", message=Message.assistant([TextPart(text)]), finish_reason="stop",
                        usage=Usage(input_tokens=10, output_tokens=10))


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_a_teacher_list_over_the_cap_is_truncated_not_discarded(adapter, caplog):
    rules = [{"predictor": "predict", "rule": f"Rule number {i} for the student to follow.", "mistakes": [1, 2, 1]}
             for i in range(3)]
    engine = ScriptedTeacher({"diagnoses": ["a", "b", "c"], "rules": rules}, chat=adapter == "chat")
    teacher = dspy.LM("scripted/teacher", engine=engine, num_retries=0)
    dspy.configure(adapter=dspy.ChatAdapter() if adapter == "chat" else dspy.JSONAdapter())
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill.phases.induction"):
        result = ask(teacher, [mistake(1), mistake(2)], max_rules=2, retries=0)
    assert result.error is None and result.attempts == 1
    assert [r.text for r in result.rules] == [rules[0]["rule"], rules[1]["rule"]]
    assert result.diagnoses == ["a", "b"]
    assert all(r.mistakes == (1, 2) for r in result.rules)
    assert "3 rules" in caplog.text and "dropped" in caplog.text
    if adapter == "json":
        assert '"maxItems": 2' in engine.schemas[0]  # the caps still reach the LM


def test_near_misses_not_proposed_again_get_one_more_measurement_in_the_next_round():
    from dspy_concept_distill.phases.proposals import near_misses_to_retry

    near = Rule("Near miss rule text here.", "p", status=RuleStatus.REJECTED, gain=0.05, evaluated_on=20, round=0)
    loser = Rule("Losing rule text here.", "p", status=RuleStatus.REJECTED, gain=-0.1, evaluated_on=20, round=0)
    flat = Rule("Flat rule text, no gain at all.", "p", status=RuleStatus.REJECTED, gain=0.0, evaluated_on=20, round=0)
    twice = Rule("Twice measured rule text.", "p", status=RuleStatus.REJECTED, gain=0.05, evaluated_on=20, round=0,
                 attempts=2)
    again = Rule("Proposed again rule text.", "p", status=RuleStatus.REJECTED, gain=0.05, evaluated_on=20, round=0)
    proposed_now = [Rule("Proposed again rule text.", "p", round=1, attempts=2)]
    retries = near_misses_to_retry([near, loser, flat, twice, again], proposed_now, round_index=1)
    assert [(r.text, r.status, r.round, r.attempts) for r in retries] == [(near.text, RuleStatus.CANDIDATE, 1, 2)]
    assert near_misses_to_retry([near], [], round_index=0) == []  # only earlier rounds count
    assert near_misses_to_retry([near], [], round_index=1, fresh=lambda rule: False) == []  # no new evidence


def test_candidates_come_in_the_teachers_order_of_preference_then_support():
    first = {"predictor": "p", "rule": "Always state the units of the answer.", "mistakes": [1]}
    last = {"predictor": "p", "rule": "Re-read the question before you answer it.", "mistakes": [1, 2]}
    replies = [reply(0, last, first), reply(1, first, last), reply(2, first, last)]
    rules = proposed_rules(replies, [[mistake(1), mistake(2)]] * 3, predictor_names=["p"],
                               leak_checker=LeakChecker([]), known_rules=[], round_index=0)
    assert [r.text for r in rules] == [first["rule"], last["rule"]]  # mean position 1/3 before 2/3


def test_the_teacher_sees_only_fields_a_predictor_reads_or_writes_and_gold_only_for_outputs():
    from dspy_concept_distill.phases.induction import program_fields, render_mistake

    fields = program_fields(PlanAndSolve())
    assert fields.reads == {"question", "plan"} and fields.writes == {"plan", "reasoning", "answer"}
    steps = [Step("plan", {"question": "Q?"}, {"plan": "add"}),
             Step("solve.predict", {"question": "Q?", "plan": "add"}, {"reasoning": "r", "answer": "5"})]
    found = Mistake(id="0-1", example_key="k1", inputs={"question": "Q?", "id": "ex-17"},
                    gold={"answer": "4", "plan": "subtract", "source": "gsm8k-train", "rationale": "RATIONALE-TEXT"},
                    outcome=Outcome(score=0.0, steps=steps))
    shown = render_mistake(found, 1, fields)
    gold = shown.split("Expected (gold labels):")[1].split("What the student did:")[0]
    assert "answer: 4" in gold and "plan: subtract" in gold
    for hidden in ("ex-17", "gsm8k-train", "RATIONALE-TEXT", "source", "rationale", " id:"):
        assert hidden not in shown
    assert "question: Q?" in shown
    assert "(none given)" in render_mistake(Mistake(id="0-2", example_key="k2", inputs={"question": "Q?"},
                                                    gold={"source": "x"}, outcome=Outcome(score=0.0)), 2, fields)


def test_a_metric_failure_is_named_as_the_metrics_not_the_programs():
    from dspy_concept_distill.phases.induction import render_mistake
    from dspy_concept_distill.records import ErrorKind

    failed = Mistake(id="0-1", example_key="k1", inputs={"question": "Q?"}, gold={"answer": "4"},
                     outcome=Outcome(score=0.0, error="ValueError: metric returned None, which is not a number",
                                     error_kind=ErrorKind.METRIC))
    shown = render_mistake(failed, 1)
    assert "The program raised" not in shown
    assert "The metric failed on this output (an error in the metric, not in the program): ValueError: metric " \
           "returned None" in shown
