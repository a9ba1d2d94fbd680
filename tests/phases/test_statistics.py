"""The statistics of rule selection as pure functions: evidence scaled to the metric's own noise, acceptance on a
lower confidence bound, early drops that spare a quiet helpful rule, the trainset extension of a near miss, and the
check of the returned rules against the starting instructions."""

import random

import pytest

from dspy_concept_distill.phases.statistics import (
    SelectionSettings,
    Verdict,
    chunk_bounds,
    decide,
    evidence,
    exact_best_case,
    paired_ci,
    prior_variance,
    racing_order,
    shown_gain,
)


def settings(**changes) -> SelectionSettings:
    values = {"min_gain": 0.0, "confidence_z": 1.0, "futility_z": 3.0, "screen_size": 0, "max_score": 1.0,
              "prior_variance": 0.24, "final_z": 1.0}
    return SelectionSettings(**{**values, **changes})


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


def test_a_few_identical_results_do_not_look_certain():
    found = evidence([1.0, 1.0, 1.0], prior_variance=0.24)
    assert found.mean == 1.0 and found.variance == pytest.approx(0.08) and found.se > 0.15


def test_the_prior_is_the_metrics_observed_spread_with_a_floor():
    assert prior_variance([0.0] * 6 + [1.0] * 4, 1.0) == pytest.approx(0.24)
    assert prior_variance([0.6] * 10, 1.0) == pytest.approx(0.01)  # no spread seen: (0.1 x max_score)^2
    assert prior_variance([0.0, 2.0], 2.0) == pytest.approx(1.0)


def test_exact_best_case_counts_every_unseen_example_as_fixable():
    assert exact_best_case({0: 0.0, 4: -1.0}, [0.0] * 4 + [1.0] * 4, 1.0) == pytest.approx((-1.0 + 3.0) / 8)


def test_a_gain_shown_to_be_real_is_accepted_and_a_noisy_one_of_the_same_size_is_not():
    base = [0.0] * 12 + [1.0] * 8
    clean = {i: (1.0 if i < 4 else 0.0) for i in range(20)}  # fixes 4, breaks nothing: +0.2
    assert decide(clean, base, settings()).verdict is Verdict.ACCEPT
    noisy = {i: (1.0 if i < 7 else -1.0 if i in (12, 13, 14) else 0.0) for i in range(20)}  # +7 -3: +0.2 too
    decision = decide(noisy, base, settings(confidence_z=1.64))
    assert decision.verdict is Verdict.NOT_SHOWN and decision.gain == pytest.approx(0.2) and decision.lower < 0
    assert "lower confidence bound" in decision.reason


def test_the_threshold_scales_with_the_metrics_noise_so_small_partial_credit_gains_pass():
    base = [0.6] * 40
    small_steady = {i: 0.03 + (0.01 if i % 2 else -0.01) for i in range(40)}  # +0.03 on a quiet metric
    quiet = settings(prior_variance=prior_variance(base, 1.0))
    assert decide(small_steady, base, quiet).verdict is Verdict.ACCEPT
    one_example = decide({i: (1.0 if i == 0 else 0.0) for i in range(40)}, [0.0] * 40, settings())
    assert one_example.verdict is Verdict.NOT_SHOWN  # +0.025 from one example of a 0/1 metric is noise


def test_min_gain_is_what_the_lower_bound_must_clear():
    base = [0.0] * 12 + [1.0] * 8
    clean = {i: (1.0 if i < 4 else 0.0) for i in range(20)}
    assert decide(clean, base, settings(min_gain=0.0)).verdict is Verdict.ACCEPT
    assert decide(clean, base, settings(min_gain=0.15)).verdict is Verdict.NOT_SHOWN  # lower bound +0.107


def test_a_clear_loser_is_dropped_early_and_a_quiet_start_keeps_racing():
    base = [0.0] * 12 + [1.0] * 8
    losing = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 12: -1.0, 13: -1.0}
    decision = decide(losing, base, settings())
    assert decision.verdict is Verdict.FUTILE and decision.seen == 6
    quiet = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 12: 0.0, 13: 0.0}  # a helpful rule whose examples were not drawn yet
    assert decide(quiet, base, settings()).verdict is Verdict.CONTINUE


def test_nothing_left_to_gain_is_refused_before_it_costs_a_call():
    decision = decide({}, [1.0] * 20, settings())
    assert decision.verdict is Verdict.CANNOT_REACH and decision.seen == 0 and "not raced" in decision.reason


def test_a_near_miss_goes_on_to_the_extension_and_is_decided_on_all_its_examples():
    base = [0.0] * 12 + [1.0] * 8
    near = {i: (1.0 if i < 3 else -1.0 if i == 12 else 0.0) for i in range(20)}  # +0.1, not shown on 20
    strict = settings(confidence_z=1.64)
    assert decide(near, base, strict).verdict is Verdict.NOT_SHOWN
    assert decide(near, base, strict, extension={}, extension_size=20).verdict is Verdict.CONTINUE
    helps = {20 + i: (1.0 if i < 6 else 0.0) for i in range(20)}
    accepted = decide(near, base, strict, extension=helps, extension_size=20)
    assert accepted.verdict is Verdict.ACCEPT and accepted.seen == 40
    nothing = {20 + i: 0.0 for i in range(20)}
    assert decide(near, base, strict, extension=nothing, extension_size=20).verdict is Verdict.NOT_SHOWN
    losing = decide({i: (-1.0 if i == 12 else 0.0) for i in range(20)}, base, strict, extension=helps,
                    extension_size=20)
    assert losing.verdict is Verdict.NOT_SHOWN and losing.seen == 20  # no valset gain: no extension


def test_the_returned_rules_must_show_their_gain_over_the_start():
    base = [0.0] * 12 + [1.0] * 8
    assert shown_gain([1.0] * 4 + [0.0] * 8 + [1.0] * 8, base, settings())[0]
    assert not shown_gain([1.0] + [0.0] * 11 + [1.0] * 8, base, settings())[0]  # one example: not shown
    assert not shown_gain(base, base, settings())[0]


def test_paired_ci_brackets_the_mean_and_narrows_with_agreement():
    low, high = paired_ci([1.0, 0.0, 1.0, 0.0])
    assert low < 0.5 < high
    assert paired_ci([0.5] * 10) == [0.5, 0.5]
