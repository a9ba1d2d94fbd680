import random

import pytest

from dspy_concept_distill.phases.statistics import chunk_bounds, projected_upper_bound, racing_order


def test_racing_order_is_a_permutation_with_stratified_prefixes():
    base = [0.0] * 12 + [1.0] * 8
    order = racing_order(base, 1.0, random.Random(3))
    assert sorted(order) == list(range(20))
    for prefix in (5, 10, 15):
        failing = sum(base[i] < 1 for i in order[:prefix])
        assert abs(failing - prefix * 12 / 20) <= 1  # each prefix keeps the 12:8 mix


def test_racing_order_depends_on_seed_only():
    base = [0.0, 1.0] * 10
    assert racing_order(base, 1.0, random.Random(1)) == racing_order(base, 1.0, random.Random(1))
    assert racing_order(base, 1.0, random.Random(1)) != racing_order(base, 1.0, random.Random(2))


def test_chunk_bounds_grow_to_the_full_valset():
    assert chunk_bounds(20) == [6, 10, 15, 20]
    assert chunk_bounds(100) == [15, 30, 50, 75, 100]
    assert chunk_bounds(5) == [5]
    assert chunk_bounds(100)[-1] == 100


def test_exact_bound_counts_every_unseen_example_as_fixable():
    base = [0.0] * 4 + [1.0] * 4
    exact, _ = projected_upper_bound({0: 0.0, 4: -1.0}, base, 1.0, z=1.5)
    assert exact == pytest.approx(-1.0 + 3.0)


def test_statistical_bound_drops_clear_losers_but_not_quiet_candidates():
    base = [0.0] * 12 + [1.0] * 8
    breaks_everything = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 12: -1.0, 13: -1.0}
    _, loser = projected_upper_bound(breaks_everything, base, 1.0, z=1.5)
    assert loser < 1.0
    nothing_yet = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 12: 0.0, 13: 0.0}
    _, quiet = projected_upper_bound(nothing_yet, base, 1.0, z=1.5)
    assert quiet >= 1.0  # a helpful rule whose examples were not drawn yet must survive the first chunk
    one_noisy_break = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 12: -1.0, 13: 0.0}
    _, noisy = projected_upper_bound(one_noisy_break, base, 1.0, z=1.5)
    assert noisy >= 1.0


def test_bounds_are_exact_once_everything_is_seen():
    base = [0.0, 1.0, 0.0]
    diffs = {0: 1.0, 1: 0.0, 2: 0.0}
    exact, statistical = projected_upper_bound(diffs, base, 1.0, z=3.0)
    assert exact == pytest.approx(1.0)
    assert statistical == pytest.approx(1.0)


# -- decide(): the accept/reject decision as a pure function ------------------------------------------------------
from dspy_concept_distill.phases.statistics import Verdict, VerificationSettings, decide  # noqa: E402
from dspy_concept_distill.phases.verification import limit_candidates  # noqa: E402
from dspy_concept_distill.rules import REJECTED, Rule  # noqa: E402

SETTINGS = VerificationSettings(min_gain=0.05, confidence_z=1.5, screen_size=0, max_score=1.0)


def test_decide_accepts_a_full_valset_gain_of_at_least_min_gain_and_rejects_less():
    base = [0.0] * 10 + [1.0] * 10
    assert decide({i: (1.0 if i == 0 else 0.0) for i in range(20)}, base, SETTINGS).verdict is Verdict.ACCEPT
    assert decide({i: 0.0 for i in range(20)}, base, SETTINGS).verdict is Verdict.BELOW_MIN_GAIN


def test_decide_drops_a_clear_loser_by_the_statistical_bound_before_the_exact_one():
    base = [0.0] * 12 + [1.0] * 8
    losing = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 12: -1.0, 13: -1.0}
    decision = decide(losing, base, SETTINGS)
    assert decision.verdict is Verdict.CLEAR_LOSER  # 8 unseen failing examples could still make up for it exactly
    assert decision.seen == 6 and decision.gain == pytest.approx(-2 / 6)


def test_decide_keeps_racing_a_quiet_candidate_and_refuses_at_once_when_nothing_is_left_to_gain():
    base = [0.0] * 12 + [1.0] * 8
    assert decide({0: 0.0, 12: 0.0}, base, SETTINGS).verdict is Verdict.CONTINUE
    full = [1.0] * 20
    decision = decide({}, full, SETTINGS)
    assert decision.verdict is Verdict.CANNOT_REACH and decision.seen == 0


def test_the_statistical_bound_is_stratified():
    # Same six results; they came from failing examples (where a rule can gain) in one case and from passing ones
    # (where it can only lose) in the other. Pooling would give both the same bound.
    base = [0.0] * 10 + [1.0] * 10
    from_failing = {i: 0.0 for i in range(6)}
    from_passing = {i: 0.0 for i in range(10, 16)}
    _, after_failing = projected_upper_bound(from_failing, base, 1.0, z=1.5)
    _, after_passing = projected_upper_bound(from_passing, base, 1.0, z=1.5)
    assert after_passing > after_failing  # the failing stratum is still unexplored there


def test_limit_candidates_keeps_the_first_in_the_teachers_order_and_says_why_the_rest_were_not_verified():
    rules = [Rule(f"Rule number {i} says something.", "p") for i in range(1, 5)]
    kept = limit_candidates(list(rules), 2)
    assert [r.text for r in kept] == [rules[0].text, rules[1].text]
    assert all(r.status == REJECTED and "max_candidates=2" in r.reason for r in rules[2:])
    assert limit_candidates(rules[:1], 2) == rules[:1]
