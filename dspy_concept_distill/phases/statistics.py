"""The racing statistics, as pure functions: the order examples are raced in, the chunk boundaries where a race
is decided, the bounds on a candidate's final gain, and ``decide``, the accept/reject rule itself.

``decide`` sees only a candidate's per-example gains over the rules in force and the base scores, so a decision
depends on the outcomes of the examples raced, never on timing or thread count.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

EPS = 1e-9
CHUNK_FRACTIONS = (0.15, 0.3, 0.5, 0.75, 1.0)
MIN_FIRST_CHUNK = 6


@dataclass(frozen=True)
class VerificationSettings:
    min_gain: float  # in mean-score units
    confidence_z: float  # width of the confidence bound used to drop clear losers early
    screen_size: int  # source mistakes each candidate is screened on (0: no screening)
    max_score: float  # the metric's maximum per example


class Verdict(StrEnum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    CANNOT_REACH = "cannot reach min_gain"
    CLEAR_LOSER = "dropped in the race"
    BELOW_MIN_GAIN = "below min_gain"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    gain: float  # mean gain per example over the examples seen
    seen: int
    reason: str = ""


def racing_order(base_scores: Sequence[float], max_score: float, rng: random.Random) -> list[int]:
    """Valset indices, shuffled within 'failing' and 'passing' strata and interleaved in proportion, so every
    prefix is a stratified sample: failing examples are where a rule can gain, passing ones where it can lose."""
    failing = [i for i, s in enumerate(base_scores) if s < max_score - EPS]
    passing = [i for i, s in enumerate(base_scores) if s >= max_score - EPS]
    rng.shuffle(failing)
    rng.shuffle(passing)
    order, fi, pi, n = [], 0, 0, len(base_scores)
    while fi < len(failing) or pi < len(passing):
        want_f = (len(order) + 1) * len(failing) / n  # take from the stratum furthest behind its share
        if fi < len(failing) and (fi < want_f or pi >= len(passing)):
            order.append(failing[fi])
            fi += 1
        else:
            order.append(passing[pi])
            pi += 1
    return order


def chunk_bounds(n: int) -> list[int]:
    bounds = sorted({min(n, max(MIN_FIRST_CHUNK, math.ceil(n * f))) for f in CHUNK_FRACTIONS})
    return [b for b in bounds if b > 0]


def projected_upper_bound(
    diffs: Mapping[int, float], base: Sequence[float], max_score: float, z: float
) -> tuple[float, float]:
    """(exact, statistical) upper bounds on the total valset gain, given the per-example gains seen so far.

    The exact bound assumes every unseen example moves to the maximum score. The statistical bound is a
    stratified estimate (failing and passing examples separately) plus ``z`` standard errors, with a
    finite-population correction and one pseudo-observation of variance per stratum, so a few identical
    results do not make it overconfident.
    """
    n = len(base)
    exact = sum(diffs.values()) + sum(max_score - base[i] for i in range(n) if i not in diffs)
    estimate, variance = 0.0, 0.0
    for stratum in (
        [i for i in range(n) if base[i] < max_score - EPS],
        [i for i in range(n) if base[i] >= max_score - EPS],
    ):
        size = len(stratum)
        seen = [diffs[i] for i in stratum if i in diffs]
        if not size:
            continue
        if not seen:
            estimate += sum(max_score - base[i] for i in stratum)  # nothing known: optimistic
            continue
        m = len(seen)
        mean = sum(seen) / m
        var = (sum((d - mean) ** 2 for d in seen) + max_score**2) / (m + 1)
        fpc = (size - m) / (size - 1) if size > 1 else 0.0
        estimate += size * mean
        variance += size**2 * var / m * fpc
    return exact, estimate + z * math.sqrt(max(variance, 0.0))


def paired_ci(diffs: Sequence[float], z: float = 1.96) -> list[float]:
    """A normal-approximation 95% confidence interval [low, high] of the mean of paired per-example differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return [mean, mean]
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return [mean - half, mean + half]


def decide(diffs: Mapping[int, float], base: Sequence[float], settings: VerificationSettings) -> Decision:
    """Accept, reject or keep racing a candidate, from its per-example gains over the rules in force so far."""
    n = len(base)
    seen = len(diffs)
    gain = sum(diffs.values()) / seen if seen else 0.0
    needed = settings.min_gain * n
    if seen == n:
        if gain < settings.min_gain - EPS:
            return Decision(Verdict.BELOW_MIN_GAIN, gain, seen,
                            f"gain {gain:+.3f} on the valset is below min_gain {settings.min_gain:g}")
        return Decision(Verdict.ACCEPT, gain, seen)
    exact, statistical = projected_upper_bound(diffs, base, settings.max_score, settings.confidence_z)
    where = f"after {seen}/{n} valset examples"
    if exact < needed - EPS:
        if not seen:
            return Decision(Verdict.CANNOT_REACH, gain, seen,
                            f"not raced: the rules in force leave at most {exact / n:+.3f} to gain on the valset, "
                            f"below min_gain {settings.min_gain:g}")
        return Decision(Verdict.CANNOT_REACH, gain, seen,
                        f"cannot reach min_gain {settings.min_gain:g} {where} (best case {exact / n:+.3f})")
    if statistical < needed - EPS:
        return Decision(Verdict.CLEAR_LOSER, gain, seen,
                        f"dropped in the race {where}: gain so far {gain:+.3f} per example, upper bound "
                        f"{statistical / n:+.3f} < min_gain {settings.min_gain:g}")
    return Decision(Verdict.CONTINUE, gain, seen)
