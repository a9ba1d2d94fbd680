"""Phase 3: keep only the rules that measurably help the student.

1. Screen (optional, cheap): a candidate must fix at least one of the training mistakes it was written for.
2. Race on the valset: each surviving candidate is added to the rules in force and scored on the valset in
   growing stratified chunks; it is dropped as soon as it provably cannot reach ``min_gain`` or is a clear loser
   by a confidence bound. A candidate that finishes the valset with a gain of at least ``min_gain`` joins the
   rules in force. This is greedy forward selection: every addition raises the set's valset score by
   ``min_gain`` or more, so the result is never below the starting program, and a rule that adds nothing on
   top of those already accepted (a redundant one) is rejected, so ties keep fewer rules.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dspy

from .budget import BudgetExhaustedError
from .evaluation import Evaluator, StudentLMError, example_key
from .mistakes import Mistake
from .rules import CANDIDATE, Rule, RuleSet

logger = logging.getLogger(__name__)

EPS = 1e-9
CHUNK_FRACTIONS = (0.3, 0.55, 0.8, 1.0)
MIN_FIRST_CHUNK = 6


@dataclass
class VerificationSettings:
    min_gain: float  # in mean-score units
    confidence_z: float  # width of the confidence bound used to drop clear losers early
    screen_size: int  # source mistakes each candidate is screened on (0: no screening)
    max_score: float  # the metric's maximum per example


def racing_order(base_scores: Sequence[float], max_score: float, rng: random.Random) -> list[int]:
    """Valset indices, shuffled within 'failing' and 'passing' strata and interleaved in proportion, so every
    prefix is a stratified sample: failing examples are where a rule can gain, passing ones where it can lose."""
    failing = [i for i, s in enumerate(base_scores) if s < max_score - EPS]
    passing = [i for i, s in enumerate(base_scores) if s >= max_score - EPS]
    rng.shuffle(failing)
    rng.shuffle(passing)
    order, fi, pi, n = [], 0, 0, len(base_scores)
    while fi < len(failing) or pi < len(passing):
        # take from the stratum that is furthest behind its proportional share
        want_f = (len(order) + 1) * len(failing) / n
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
    diffs: dict[int, float], base: Sequence[float], max_score: float, z: float
) -> tuple[float, float]:
    """(exact, statistical) upper bounds on the total valset gain, given the per-example gains seen so far.

    The exact bound assumes every unseen example moves to the maximum score. The statistical bound is a
    stratified estimate (failing and passing examples separately) plus ``z`` standard errors, with a
    finite-population correction and one pseudo-observation of variance per stratum, so a few identical
    results do not make it overconfident.
    """
    n = len(base)
    seen_total = sum(diffs.values())
    exact = seen_total + sum(max_score - base[i] for i in range(n) if i not in diffs)
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


class Verifier:
    def __init__(
        self,
        evaluator: Evaluator,
        valset: Sequence[dspy.Example],
        trainset: Sequence[dspy.Example],
        settings: VerificationSettings,
        rng: random.Random,
        progress: Callable[..., object] | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.valset = list(valset)
        self.train_by_key = {example_key(ex): ex for ex in trainset}
        self.settings = settings
        self.rng = rng
        self.progress = progress

    def base_scores(self, ruleset: RuleSet) -> list[float]:
        outcomes = self.evaluator.run([(ruleset, ex) for ex in self.valset], phase="verification")
        return [o.score for o in outcomes]

    # -- screening ------------------------------------------------------------------------------------------------
    def screen(self, current: RuleSet, candidates: Sequence[Rule], mistakes: dict[str, Mistake]) -> list[Rule]:
        """Drop candidates that fix none of their own source mistakes; return survivors, most promising first."""
        k = self.settings.screen_size
        fixed: dict[str, float] = {}
        if k > 0:
            jobs, plan = [], {}
            for rule in candidates:
                examples = [self.train_by_key[m.example_key] for mid in rule.source_mistakes[:k]
                            if (m := mistakes.get(mid)) is not None and m.example_key in self.train_by_key]
                plan[rule.id] = examples
                jobs += [(current.with_rule(rule), ex) for ex in examples]
            try:
                self.evaluator.run(jobs, phase="screening")
            finally:
                for rule in candidates:
                    fixed_here = checked = 0
                    for ex in plan[rule.id]:
                        new = self.evaluator.cached(current.with_rule(rule), ex)
                        old = self.evaluator.cached(current, ex)
                        if new is None or old is None:
                            continue
                        checked += 1
                        fixed_here += new.score > old.score + EPS
                    if checked and not fixed_here:
                        rule.reject(f"fixed none of the {checked} training mistake(s) it was written for")
                    elif checked:
                        fixed[rule.id] = fixed_here / checked
        survivors = [r for r in candidates if r.status == CANDIDATE]
        position = {r.id: i for i, r in enumerate(candidates)}
        survivors.sort(key=lambda r: (-fixed.get(r.id, 0.0), -len(r.source_mistakes), position[r.id]))
        return survivors

    # -- racing ---------------------------------------------------------------------------------------------------
    def race(self, current: RuleSet, base: list[float], rule: Rule, order: Sequence[int]) -> list[float] | None:
        """Score ``current + rule`` on the valset in chunks; return its valset scores if it is accepted."""
        s = self.settings
        n = len(self.valset)
        needed = s.min_gain * n
        candidate = current.with_rule(rule)
        diffs: dict[int, float] = {}
        for bound in chunk_bounds(n):
            todo = [i for i in order[:bound] if i not in diffs]
            outcomes = self.evaluator.run([(candidate, self.valset[i]) for i in todo], phase="verification")
            for i, outcome in zip(todo, outcomes, strict=True):
                diffs[i] = outcome.score - base[i]
            if len(diffs) == n:
                break
            exact, statistical = projected_upper_bound(diffs, base, s.max_score, s.confidence_z)
            seen = f"after {len(diffs)}/{n} valset examples"
            if exact < needed - EPS:
                rule.reject(f"cannot reach min_gain {s.min_gain:g} {seen} (best case {exact / n:+.3f})",
                            gain=sum(diffs.values()) / len(diffs), evaluated_on=len(diffs))
                return None
            if statistical < needed - EPS:
                rule.reject(
                    f"dropped in the race {seen}: gain so far {sum(diffs.values()) / len(diffs):+.3f} per example, "
                    f"upper bound {statistical / n:+.3f} < min_gain {s.min_gain:g}",
                    gain=sum(diffs.values()) / len(diffs), evaluated_on=len(diffs),
                )
                return None
        gain = sum(diffs.values()) / n
        if gain < s.min_gain - EPS:
            rule.reject(f"gain {gain:+.3f} on the valset is below min_gain {s.min_gain:g}", gain=gain, evaluated_on=n)
            return None
        rule.accept(gain, n, f"raised the valset score by {gain:+.3f} over the {len(current)} rule(s) in force")
        return [base[i] + diffs[i] for i in range(n)]

    def run(
        self, current: RuleSet, candidates: Sequence[Rule], mistakes: dict[str, Mistake]
    ) -> tuple[RuleSet, list[float] | None, str | None]:
        """Screen and race ``candidates`` on top of ``current``.

        Returns the rules in force afterwards, their valset scores (None if even the starting point could not be
        scored) and why verification stopped early (None if it finished). When the budget runs out or the student
        LM fails, undecided candidates are rejected with that reason and everything decided so far stands: every
        accepted rule was verified on the whole valset.
        """
        base: list[float] | None = None
        bar = None
        try:
            base = self.base_scores(current)
            survivors = self.screen(current, candidates, mistakes)
            order = racing_order(base, self.settings.max_score, self.rng)
            bar = self.progress(total=len(survivors), desc="Verifying rules") if self.progress else None
            for rule in survivors:
                scores = self.race(current, base, rule, order)
                if scores is not None:
                    current, base = current.with_rule(rule), scores
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(score=f"{sum(base) / len(base):.3f}", rules=len(current))
        except (BudgetExhaustedError, StudentLMError) as exc:
            for rule in candidates:
                if rule.status == CANDIDATE:
                    rule.reject(f"not verified: {exc}")
            logger.warning("verification stopped early: %s", exc)
            return current, base, str(exc)
        finally:
            if bar is not None:
                bar.close()
        return current, base, None
