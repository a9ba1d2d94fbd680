import random

import pytest

from dspy_concept_distill.verification import chunk_bounds, projected_upper_bound, racing_order


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
    assert chunk_bounds(20) == [6, 11, 16, 20]
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
