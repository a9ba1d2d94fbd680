"""The statistics of rule selection, as pure functions: the order valset examples are raced in, the chunk boundaries
where a race is looked at, the evidence a candidate's per-example gains carry, and ``decide``, the accept/reject rule.

A candidate's evidence is its paired per-example gains over the rules in force (``diffs``: example index -> score
with the candidate minus score without). Their spread is the noise of the measurement, so every threshold here is
in units of it: the same rule works for a 0/1 metric on 20 examples and for a partial-credit metric on 200.

- **Accept** once the candidate has run on every valset example of the race and the one-sided lower confidence
  bound of its mean gain, ``mean - confidence_z * se``, clears ``min_gain`` (0 by default: any gain that is shown
  to be real). The standard error carries one pseudo-observation of the metric's own variability on the valset
  (``prior_variance``), so two or three identical results do not look certain.
- **Drop early** (futility) at a chunk boundary when even an optimistic projection (the unseen examples gaining
  ``futility_z`` standard errors more than those seen) could not pass that test at the end, or when no outcome of
  the unseen examples could lift the mean gain to ``min_gain`` (the exact bound).

A decision depends only on the diffs of the examples raced, never on timing or thread count.
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
MIN_PRIOR_SD = 0.1  # of max_score: the least variability a metric is assumed to have
HOLD_BACK_MIN = 60  # from this many valset examples on, some are held back to confirm what is returned ...
HOLD_BACK_MAX = 100  # ... half of them, at most this many


@dataclass(frozen=True)
class SelectionSettings:
    """What ``decide`` and the racer need to know."""

    min_gain: float  # the mean gain a rule must be shown to exceed (mean-score units); 0: any real gain
    confidence_z: float  # the one-sided lower bound that accepts: mean - confidence_z * se
    futility_z: float  # optimism of the projection that drops a candidate before the end of the valset
    screen_size: int  # source mistakes each candidate is screened on (0: no screening)
    max_score: float  # the metric's maximum per example
    prior_variance: float  # one pseudo-observation of the per-example variance (the metric's observed spread)
    window: int = 1  # candidates raced side by side; the best of them is decided first
    final_z: float = 0.0  # the lower bound of the returned rule set's gain over the starting rules must clear 0
    extend: bool = False  # a near miss on the valset goes on to trainset examples it was not written for
    strict_z: float = 2.5  # the returned rules pass on the valset alone when their gain's lower bound clears 0 here


class Verdict(StrEnum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    CANNOT_REACH = "cannot reach min_gain"
    FUTILE = "dropped in the race"
    NOT_SHOWN = "gain not shown"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    gain: float  # mean gain per example over the examples seen
    seen: int
    reason: str = ""
    lower: float | None = None  # the lower confidence bound of the gain when the race reached the end


@dataclass(frozen=True)
class Evidence:
    """What a candidate's paired gains say: their number, mean and the standard error of the mean."""

    seen: int
    mean: float
    variance: float  # per example, with the pseudo-observation

    @property
    def se(self) -> float:
        return math.sqrt(self.variance / self.seen) if self.seen else math.inf


def evidence(diffs: Sequence[float], prior_variance: float) -> Evidence:
    """Mean and variance of paired gains; the variance counts one pseudo-observation of ``prior_variance``."""
    k = len(diffs)
    if not k:
        return Evidence(0, 0.0, prior_variance)
    mean = sum(diffs) / k
    spread = sum((d - mean) ** 2 for d in diffs)
    return Evidence(k, mean, (spread + prior_variance) / k)


def prior_variance(base_scores: Sequence[float], max_score: float) -> float:
    """The metric's observed variability: the variance of the valset scores of the rules in force, at least
    ``(MIN_PRIOR_SD * max_score)**2``."""
    n = len(base_scores)
    mean = sum(base_scores) / n if n else 0.0
    observed = sum((s - mean) ** 2 for s in base_scores) / n if n else 0.0
    return max(observed, (MIN_PRIOR_SD * max_score) ** 2)


def held_back_size(n: int) -> int:
    """How many of ``n`` valset examples are held back (see ``hold_back``)."""
    return 0 if n < HOLD_BACK_MIN else min(n // 2, HOLD_BACK_MAX)


def hold_back(n: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Valset indices to race on and indices held back. From ``HOLD_BACK_MIN`` examples on, a random half (at most
    ``HOLD_BACK_MAX``) is held back: the rules to return are then confirmed on examples the selection never saw (an
    unbiased measurement of their gain), and races cost less; below that, every example races and the trainset
    confirms."""
    indices = list(range(n))
    held = held_back_size(n)
    if not held:
        return indices, []
    rng.shuffle(indices)
    return sorted(indices[held:]), sorted(indices[:held])


def train_sample(n: int, size: int, rng: random.Random) -> list[int]:
    """Trainset indices the student runs on to find mistakes: all of them, or a random ``size`` of them."""
    if n <= size:
        return list(range(n))
    return sorted(rng.sample(range(n), size))


def racing_order(base_scores: Sequence[float], max_score: float, rng: random.Random) -> list[int]:
    """Valset indices, shuffled within 'failing' and 'passing' strata and interleaved in proportion, so every
    prefix is a stratified sample: failing examples are where a rule can gain, passing ones where it can lose."""
    failing = [i for i, s in enumerate(base_scores) if s < max_score - EPS]
    passing = [i for i, s in enumerate(base_scores) if s >= max_score - EPS]
    rng.shuffle(failing)
    rng.shuffle(passing)
    order: list[int]
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


def exact_best_case(diffs: Mapping[int, float], base: Sequence[float], max_score: float) -> float:
    """The largest mean gain over the whole valset still possible: every unseen example moves to ``max_score``."""
    n = len(base)
    return (sum(diffs.values()) + sum(max_score - base[i] for i in range(n) if i not in diffs)) / n


def paired_ci(diffs: Sequence[float], z: float = 1.96) -> list[float]:
    """A normal-approximation 95% confidence interval [low, high] of the mean of paired per-example differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return [mean, mean]
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = z * sd / math.sqrt(n)
    return [mean - half, mean + half]


def decide(diffs: Mapping[int, float], base: Sequence[float], settings: SelectionSettings, *,
           extension: Mapping[int, float] | None = None, extension_size: int = 0) -> Decision:
    """Accept, reject or keep racing a candidate, from its per-example gains over the rules in force so far.

    ``diffs`` are its gains on valset examples (``base``: the valset scores of the rules in force). A near miss
    (a positive mean gain on the whole valset whose lower bound does not clear ``min_gain``) may go on to
    ``extension_size`` further examples it was not written for (from the trainset); ``extension`` holds its gains
    there so far. It is then accepted when the lower bound over all its examples clears ``min_gain``, its valset
    gain staying positive (so the valset score never falls)."""
    n = len(base)
    found = evidence(list(diffs.values()), settings.prior_variance)
    seen, gain, need = found.seen, found.mean, settings.min_gain
    if seen == n:
        lower = gain - settings.confidence_z * found.se
        if lower > need + EPS and gain > EPS:
            return Decision(Verdict.ACCEPT, gain, seen, lower=lower)
        if gain > EPS and extension_size:
            return _decide_extended(diffs, extension or {}, extension_size, settings)
        return Decision(Verdict.NOT_SHOWN, gain, seen,
                        f"gain {gain:+.3f} on the valset, but its lower confidence bound {lower:+.3f} does not "
                        f"clear {need:g}", lower=lower)
    best = exact_best_case(diffs, base, settings.max_score)
    where = f"after {seen}/{n} valset examples"
    if best <= need + EPS:
        if not seen:
            return Decision(Verdict.CANNOT_REACH, gain, seen,
                            f"not raced: the rules in force leave at most {best:+.3f} to gain on the valset, "
                            f"not above {need:g}")
        return Decision(Verdict.CANNOT_REACH, gain, seen,
                        f"cannot show a gain above {need:g} {where} (best case {best:+.3f})")
    if not seen:
        return Decision(Verdict.CONTINUE, gain, seen)
    if _futile(found, n, settings):
        projected = _projected(found, n, settings)
        return Decision(Verdict.FUTILE, gain, seen,
                        f"dropped in the race {where}: gain so far {gain:+.3f} per example; even an optimistic "
                        f"finish ({projected:+.3f}) could not show a gain above {need:g}")
    return Decision(Verdict.CONTINUE, gain, seen)


def _projected(found: Evidence, total: int, settings: SelectionSettings) -> float:
    """The mean gain over ``total`` examples if those not seen yet gained ``futility_z`` standard errors more."""
    optimistic_rest = found.mean + settings.futility_z * found.se
    return (found.seen * found.mean + (total - found.seen) * optimistic_rest) / total


def _futile(found: Evidence, total: int, settings: SelectionSettings) -> bool:
    projected = _projected(found, total, settings)
    return projected - settings.confidence_z * math.sqrt(found.variance / total) <= settings.min_gain + EPS


def _decide_extended(diffs: Mapping[int, float], extension: Mapping[int, float], size: int,
                     settings: SelectionSettings) -> Decision:
    """A near miss on the valset, decided on the valset and the extension examples together."""
    pooled = evidence([*diffs.values(), *extension.values()], settings.prior_variance)
    total, need = len(diffs) + size, settings.min_gain
    where = f"{len(diffs)} valset and {len(extension)} further examples"
    if len(extension) == size:
        lower = pooled.mean - settings.confidence_z * pooled.se
        if lower > need + EPS:
            return Decision(Verdict.ACCEPT, pooled.mean, pooled.seen, lower=lower)
        return Decision(Verdict.NOT_SHOWN, pooled.mean, pooled.seen,
                        f"gain {pooled.mean:+.3f} on {where}, but its lower confidence bound {lower:+.3f} does not "
                        f"clear {need:g}", lower=lower)
    if extension and _futile(pooled, total, settings):
        return Decision(Verdict.FUTILE, pooled.mean, pooled.seen,
                        f"dropped after {where}: gain so far {pooled.mean:+.3f} per example; even an optimistic "
                        f"finish ({_projected(pooled, total, settings):+.3f}) could not show a gain above {need:g}")
    return Decision(Verdict.CONTINUE, pooled.mean, pooled.seen)


def shown_gain(scores: Sequence[float], base: Sequence[float], settings: SelectionSettings) -> tuple[bool, float]:
    """Whether the mean gain of ``scores`` over ``base`` (the same valset examples) is shown to be real: its lower
    confidence bound at ``final_z`` is above 0. Returns (shown, lower bound)."""
    found = evidence([s - b for s, b in zip(scores, base, strict=True)], settings.prior_variance)
    lower = found.mean - settings.final_z * found.se
    return found.mean > EPS and lower > EPS, lower
