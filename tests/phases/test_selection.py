"""The selection policy (``racing.Selection``) against a fake scorer, no LM: best first among the candidates raced side
by side, races started again against new rules in force, a rule raced again in another predictor, the budget, and
copies that run ahead without touching the original."""

from __future__ import annotations

import random
from collections.abc import Callable

from dspy_concept_distill.phases.racing import Extension, Selection
from dspy_concept_distill.phases.statistics import SelectionSettings, Verdict, racing_order
from dspy_concept_distill.rules import Rule, RuleSet

N = 20
BASE = [0.0] * 12 + [1.0] * 8  # 12 failing, 8 passing examples
ORDER = racing_order(BASE, 1.0, random.Random(0))
FAILING = [i for i in ORDER if BASE[i] == 0.0]  # in racing order: FAILING[:4] are in the first chunk of 6
PASSING = [i for i in ORDER if BASE[i] == 1.0]


def settings(**changes) -> SelectionSettings:
    values = {"min_gain": 0.0, "confidence_z": 1.0, "futility_z": 3.0, "screen_size": 0, "max_score": 1.0,
              "prior_variance": 0.24, "window": 1}
    return SelectionSettings(**{**values, **changes})


Effect = Callable[[int], float]  # per example index: change of the score


def fixes(*examples: int) -> Effect:
    return lambda i: 1.0 if i in examples else 0.0


def breaks(*examples: int) -> Effect:
    return lambda i: -1.0 if i in examples else 0.0


def both(*effects: Effect) -> Effect:
    return lambda i: sum(effect(i) for effect in effects)


def run(selection: Selection, world: dict[tuple[str, str], Effect]) -> Selection:
    """Answer every batch the policy asks for: an example's score is its base score (0 for the trainset examples an
    extension adds, index >= N) plus the effects of the rules in force, each acting only in the predictor ``world``
    names for its text (clipped to 0..1)."""
    while (batch := selection.next_batch()) is not None:
        scores = {}
        for race, index in batch:
            effects = [world.get((r.text, r.predictor), lambda i: 0.0)(index) for r in race.candidate]
            total = (BASE[index] if index < N else 0.0) + sum(effects)
            scores[(race, index)] = min(1.0, max(0.0, total))
        selection.take(scores)
    return selection


def rule(text: str, predictor: str = "p") -> Rule:
    return Rule(text=text, predictor=predictor)


def test_best_first_a_tempting_rule_loses_to_its_conditional_form_when_raced_side_by_side():
    tempting = rule("Always round the final answer up.")  # fixes the subgroup, breaks a passing example
    conditional = rule("When packing items in groups, round partial groups up.")  # fixes the subgroup only
    subgroup = FAILING[:4]
    world = {(tempting.text, "p"): both(fixes(*subgroup), breaks(PASSING[0])),
             (conditional.text, "p"): fixes(*subgroup)}
    side_by_side = run(Selection([tempting, conditional], RuleSet(), BASE, ORDER, settings(window=2)), world)
    assert [r.text for r in side_by_side.in_force] == [conditional.text]
    assert side_by_side.decisions[tempting.id].verdict is not Verdict.ACCEPT  # it only breaks things on top
    one_at_a_time = run(Selection([tempting, conditional], RuleSet(), BASE, ORDER, settings(window=1)), world)
    assert tempting.text in [r.text for r in one_at_a_time.in_force]  # in the teacher's order it gets in first


def test_an_accepted_rule_restarts_the_others_against_the_new_rules_in_force():
    a, b, duplicate = rule("Rule a fixes three."), rule("Rule b fixes four."), rule("Rule b again, other words.")
    world = {(a.text, "p"): fixes(*FAILING[5:8]), (b.text, "p"): fixes(*FAILING[:4]),
             (duplicate.text, "p"): fixes(*FAILING[:4])}
    done = run(Selection([b, a, duplicate], RuleSet(), BASE, ORDER, settings(window=3, confidence_z=0.5)), world)
    assert [r.text for r in done.in_force] == [b.text, a.text]  # the better one first
    assert done.decisions[duplicate.id].verdict is not Verdict.ACCEPT  # adds nothing on top of b
    assert sum(done.scores) == 8 + 4 + 3
    assert all(race.current == done.in_force or race.decision is not None for race in done.races.values())


def test_a_rule_that_did_not_help_where_it_was_put_is_raced_in_the_other_predictor():
    misplaced = rule("List every quantity with its unit first.", "answer")
    world = {(misplaced.text, "plan"): fixes(*FAILING[:5])}  # acts only in the plan
    done = run(Selection([misplaced], RuleSet(), BASE, ORDER, settings(), predictors=["plan", "answer"]), world)
    assert [(r.text, r.predictor) for r in done.in_force] == [(misplaced.text, "plan")]
    assert done.placements and done.placements[0].placement_of == misplaced.id
    harmful = rule("Skip the small quantities.", "answer")
    world = {(harmful.text, "answer"): breaks(*PASSING[:4])}
    done = run(Selection([harmful], RuleSet(), BASE, ORDER, settings(), predictors=["plan", "answer"]), world)
    assert done.placements == []  # it hurt where it was put: not tried elsewhere


def test_the_policy_stops_when_the_budget_cannot_pay_for_the_next_race():
    a, b = rule("Rule a fixes three."), rule("Rule b fixes four.")
    world = {(a.text, "p"): fixes(*FAILING[:4]), (b.text, "p"): fixes(*FAILING[4:8])}
    done = run(Selection([a, b], RuleSet(), BASE, ORDER, settings(), runs=25), world)
    assert [r.text for r in done.in_force] == [a.text] and b.id not in done.decisions
    assert done.stopped is not None and "budget" in done.stopped


def test_a_near_miss_goes_on_to_the_extension_it_was_not_written_for():
    near = rule("Rule that helps a little.")
    trainset = list(range(N, 2 * N))  # extension indices: the trainset, after the valset
    world = {(near.text, "p"): both(fixes(*FAILING[:3], *trainset[:6]), breaks(PASSING[0]))}
    extension = Extension(RuleSet(), dict.fromkeys(trainset, 0.0), trainset, {near.id: frozenset({trainset[0]})})
    strict = settings(confidence_z=1.64, extend=True)
    done = run(Selection([near], RuleSet(), BASE, ORDER, strict, extension=extension), world)
    assert [r.text for r in done.in_force] == [near.text]
    assert done.decisions[near.id].seen == 39  # 20 valset + 19 trainset examples: its own source left out
    alone = run(Selection([near], RuleSet(), BASE, ORDER, strict), world)
    assert alone.decisions[near.id].verdict is Verdict.NOT_SHOWN


def test_a_fork_runs_ahead_without_changing_the_original():
    a = rule("Rule a fixes three.")
    selection = Selection([a], RuleSet(), BASE, ORDER, settings())
    batch = selection.next_batch()
    twin = selection.fork()
    twin.take({job: 1.0 for job in twin.next_batch()})
    assert not any(race.own for race in selection.races.values())
    assert selection.next_batch() == batch
