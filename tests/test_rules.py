import json

import pytest

from dspy_concept_distill import Rule, RuleSet
from dspy_concept_distill.rules import (
    MAX_RULES_CHARS_PER_PREDICTOR,
    RULES_HEADER,
    Adherence,
    RuleStatus,
    RuleVerdict,
    fits_predictor_budget,
    record_verdicts,
    render_instructions,
)
from tests.helpers import PlanAndSolve


def test_a_verdict_is_written_into_the_rule_of_its_id_and_round_and_leaves_what_it_did_not_find():
    first = Rule("Convert every quantity to one unit first.", "p", round=0)
    again = Rule(first.text, "p", round=1)  # the same rule proposed again: another record
    seen = Adherence("valset failures", 4, 3, 2, ignored=False)
    record_verdicts([first, again], [
        RuleVerdict.accept(again, gain=0.2, evaluated_on=20, reason="raised it", gain_ci=(0.1, 0.3), adherence=seen),
        RuleVerdict.reject(first, "lost", gain=-0.1, evaluated_on=10),
        RuleVerdict(first.id, first.round, ablation_gain=0.05)])
    assert (again.status, again.gain, again.evaluated_on, again.reason) == (RuleStatus.ACCEPTED, 0.2, 20, "raised it")
    assert again.gain_ci == [0.1, 0.3] and again.adherence == seen and again.ablation_gain is None
    assert (first.status, first.gain, first.evaluated_on, first.reason) == (RuleStatus.REJECTED, -0.1, 10, "lost")
    assert first.ablation_gain == 0.05  # an ablation verdict leaves the status and reason as they were
    record_verdicts([first], [RuleVerdict.reject(first, "not verified: stopped")])
    assert (first.gain, first.evaluated_on) == (-0.1, 10)
    with pytest.raises(KeyError):
        record_verdicts([first], [RuleVerdict(first.id, 2, reason="no such record")])
    assert Rule.from_dict(again.to_dict()) == again  # the adherence record reads back from its JSON object
    assert again.to_dict()["adherence"] == {"where": "valset failures", "examples": 4, "changed": 3, "fixed": 2,
                                            "ignored": False}


def test_rule_text_is_normalized_to_one_line_without_list_marker():
    rule = Rule(text="  - Convert   units\n first. ", predictor="predict")
    assert rule.text == "Convert units first."
    assert rule.id == Rule(text="convert units first.", predictor="predict").id


def test_rule_rejects_empty_text_and_missing_predictor():
    with pytest.raises(ValueError, match="non-empty text"):
        Rule(text="   ", predictor="predict")
    with pytest.raises(ValueError, match="predictor"):
        Rule(text="Do X.", predictor="")


def test_render_appends_numbered_rules_and_keeps_base_without_rules():
    assert render_instructions("Solve it.", []) == "Solve it."
    text = render_instructions("Solve it.", [Rule(text="A.", predictor="p"), "B."])
    assert text == f"Solve it.\n\n{RULES_HEADER}\n1. A.\n2. B."


def test_apply_targets_named_predictors_and_never_changes_the_original():
    program = PlanAndSolve()
    before = {n: (p.signature, p.signature.instructions) for n, p in program.named_predictors()}
    rules = RuleSet([Rule(text="Plan in units.", predictor="plan"),
                     Rule(text="Answer tersely.", predictor="solve.predict")])
    new = rules.apply(program)
    after = dict(new.named_predictors())
    assert "Plan in units." in after["plan"].signature.instructions
    assert "Plan in units." not in after["solve.predict"].signature.instructions
    assert "Answer tersely." in after["solve.predict"].signature.instructions
    for name, predictor in program.named_predictors():
        assert predictor.signature is before[name][0]
        assert predictor.signature.instructions == before[name][1]


def test_apply_refuses_rules_for_predictors_the_program_lacks():
    with pytest.raises(ValueError, match=r"\['nope'\]"):
        RuleSet([Rule(text="X.", predictor="nope")]).apply(PlanAndSolve())


def test_json_round_trip_keeps_every_field(tmp_path):
    rule = Rule(text="Convert units.", predictor="plan", source_mistakes=["0-ab"], status=RuleStatus.ACCEPTED, gain=0.1,
                evaluated_on=20, reason="ok", duplicates=["Convert all units."])
    path = tmp_path / "rules.json"
    RuleSet([rule]).to_json(path)
    loaded = RuleSet.from_json(path)
    assert [r.to_dict() for r in loaded] == [rule.to_dict()]
    assert RuleSet.from_json(json.dumps([rule.to_dict()])).rules[0].text == "Convert units."


def test_json_errors_name_the_problem():
    with pytest.raises(ValueError, match="does not parse"):
        RuleSet.from_json("{not json")
    with pytest.raises(ValueError, match="unknown rule fields"):
        RuleSet.from_json(json.dumps([{"text": "x", "predictor": "p", "colour": "red"}]))
    with pytest.raises(ValueError, match="unsupported rule set format"):
        RuleSet.from_json(json.dumps({"format": "other/9", "rules": []}))
    with pytest.raises(FileNotFoundError):
        RuleSet.from_json("no_such_file.json")


def test_markdown_round_trip_groups_by_predictor(tmp_path):
    rules = RuleSet([Rule(text="Plan in units.", predictor="plan", gain=0.05),
                     Rule(text="Answer tersely.", predictor="solve.predict"),
                     Rule(text="Check the plan.", predictor="plan")])
    text = rules.to_markdown(tmp_path / "rules.md")
    assert text.index("`plan`") < text.index("`solve.predict`")
    loaded = RuleSet.from_markdown(tmp_path / "rules.md")
    assert [(r.predictor, r.text) for r in loaded] == [
        ("plan", "Plan in units."), ("plan", "Check the plan."), ("solve.predict", "Answer tersely.")]
    assert loaded.rules[0].gain == pytest.approx(0.05)


def test_markdown_bullet_before_heading_is_an_error():
    with pytest.raises(ValueError, match="line 1"):
        RuleSet.from_markdown("- orphan rule\n")


def test_ruleset_is_a_value_and_drops_exact_repeats():
    a = Rule(text="A.", predictor="p")
    assert RuleSet([a]) == RuleSet([Rule(text="A.", predictor="p")])
    assert len(RuleSet([a, Rule(text="a.", predictor="p")])) == 1
    base = RuleSet()
    extended = base.with_rule(a)
    assert len(base) == 0 and len(extended) == 1


def test_fits_predictor_budget_counts_only_the_rules_of_the_same_predictor():
    long_text = "Check every step of the plan. " + "z" * 350
    in_force = [Rule(text=f"{long_text} {i}", predictor="plan", status=RuleStatus.ACCEPTED) for i in range(5)]
    used = sum(len(r.text) for r in in_force)
    assert used <= MAX_RULES_CHARS_PER_PREDICTOR
    small = Rule(text="Keep it short.", predictor="plan")
    assert used + len(small.text) <= MAX_RULES_CHARS_PER_PREDICTOR
    assert fits_predictor_budget(in_force, small)
    big = Rule(text="w" * (MAX_RULES_CHARS_PER_PREDICTOR - used + 1), predictor="plan")
    assert not fits_predictor_budget(in_force, big)
    assert fits_predictor_budget(in_force, Rule(text=big.text, predictor="solve"))
    assert fits_predictor_budget([], Rule(text="w" * MAX_RULES_CHARS_PER_PREDICTOR, predictor="plan"))


# -- rules already in a program's instructions (re-optimizing, issue 15) -----------------------------------------------
def test_split_instructions_reads_back_what_render_wrote():
    from dspy_concept_distill.rules import split_instructions

    rules = [Rule(text="A.", predictor="p"), Rule(text="Two words.", predictor="p")]
    assert split_instructions(render_instructions("Solve it.\n", rules)) == ("Solve it.", ["A.", "Two words."])
    assert split_instructions(render_instructions("", rules)) == ("", ["A.", "Two words."])
    assert split_instructions("Solve it.") == ("Solve it.", [])
    # a list stacked by an earlier version (the header twice, each list from 1) is read as one list
    stacked = f"Solve it.\n\n{RULES_HEADER}\n1. A.\n2. B.\n\n{RULES_HEADER}\n1. C."
    assert split_instructions(stacked) == ("Solve it.", ["A.", "B.", "C."])
    doubled = f"Solve it.\n\n{RULES_HEADER}\n1. A.\n2. B.\n3. C.\n\n{RULES_HEADER}\n1. a.\n2. B."  # an apply()
    assert split_instructions(doubled) == ("Solve it.", ["A.", "B.", "C."])
    # text after the list is not a rule list this package wrote: the instructions are left as they are
    edited = f"Solve it.\n\n{RULES_HEADER}\n1. A.\nThen answer."
    assert split_instructions(edited) == (edited, [])


def numbered_lists(text: str) -> list[list[str]]:
    return [[line for line in block.splitlines()[1:]] for block in text.split(RULES_HEADER)[1:]]


def test_applying_a_rule_set_to_a_program_that_has_it_changes_nothing():
    program = PlanAndSolve()
    rules = RuleSet([Rule(text="Plan in units.", predictor="plan"), Rule(text="Check units.", predictor="plan"),
                     Rule(text="Answer tersely.", predictor="solve.predict")])
    once = rules.apply(program)
    twice = rules.apply(once)
    for (name, a), (_, b) in zip(once.named_predictors(), twice.named_predictors(), strict=True):
        assert a.signature.instructions == b.signature.instructions, name
    assert twice.plan.signature.instructions.count(RULES_HEADER) == 1
    assert numbered_lists(twice.plan.signature.instructions) == [["1. Plan in units.", "2. Check units."]]


def test_applying_new_rules_to_an_optimized_program_continues_its_list():
    program = RuleSet([Rule(text="Plan in units.", predictor="plan")]).apply(PlanAndSolve())
    more = RuleSet([Rule(text="plan in units.", predictor="plan"), Rule(text="Name each quantity.", predictor="plan")])
    text = more.apply(program).plan.signature.instructions
    assert text.count(RULES_HEADER) == 1
    assert numbered_lists(text) == [["1. Plan in units.", "2. Name each quantity."]]
    assert text.startswith(program.plan.signature.instructions.split(f"\n\n{RULES_HEADER}")[0])
