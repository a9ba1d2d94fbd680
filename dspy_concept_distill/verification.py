"""Phase 3: keep only the rules that measurably help the student.

1. Screen (optional, cheap): each candidate is run on a few of the training mistakes it was written for. The
   result is evidence that orders the candidates, never a veto: any prompt change re-draws some answers of a real
   LM, so one or two samples cannot tell a helpful rule from a lucky neutral one.
2. Race on the valset: candidates, most promising first, are each added to the rules in force and scored on the
   valset in growing stratified chunks; ``decide`` drops one as soon as it provably cannot reach ``min_gain`` or is
   a clear loser by a confidence bound, and accepts one that finishes the valset with a gain of at least
   ``min_gain``. This is greedy forward selection: every addition raises the set's valset score by ``min_gain`` or
   more, so the result never scores below the starting program, and a rule that adds nothing on top of those
   already accepted is rejected, so ties keep fewer rules.

With threads to spare (more than a first chunk needs), the first chunks of the next candidates run speculatively
against the same rules in force while the current race runs. Decisions are taken in order, each against the rules
in force at its turn, so they are the same at any thread count; a speculative chunk whose base changed (a rule
before it was accepted) is run again, which is the only extra cost of speculation.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import dspy

from .evaluation import STOPPING_ERRORS, Evaluator, Outcome, example_key, raise_if_incomplete
from .mistakes import Mistake
from .rules import CANDIDATE, MAX_RULES_CHARS_PER_PREDICTOR, Rule, RuleSet, fits_predictor_budget

logger = logging.getLogger(__name__)

EPS = 1e-9
CHUNK_FRACTIONS = (0.15, 0.3, 0.5, 0.75, 1.0)
MIN_FIRST_CHUNK = 6


@dataclass(frozen=True)
class VerificationSettings:
    min_gain: float  # in mean-score units
    confidence_z: float  # width of the confidence bound used to drop clear losers early
    screen_size: int  # source mistakes each candidate is screened on (0: no screening)
    max_score: float  # the metric's maximum per example
    lookahead: int = 0  # candidates whose first chunk runs speculatively beside the current race


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


@dataclass
class VerificationResult:
    """The rules in force after verification, their valset scores (None if even the starting point could not be
    scored) and why verification stopped early (None if it finished)."""

    ruleset: RuleSet
    scores: list[float] | None
    stopped: str | None = None
    decisions: dict[str, Decision] = field(default_factory=dict)


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


def adherence(evaluator: Evaluator, before: RuleSet, after: RuleSet, examples: Sequence[dspy.Example],
              where: str) -> dict[str, Any] | None:
    """Does the student act on the rule that turns ``before`` into ``after``? On ``examples`` already run with both
    (no new LM calls): how many outputs changed and how many mistakes went away."""
    changed = fixed = seen = 0
    for example in examples:
        old, new = evaluator.cached(before, example), evaluator.cached(after, example)
        if old is None or new is None:
            continue
        seen += 1
        changed += _outputs(old) != _outputs(new)
        fixed += new.score > old.score + EPS
    if not seen:
        return None
    return {"where": where, "examples": seen, "changed": changed, "fixed": fixed, "ignored": changed == 0}


def _outputs(outcome: Outcome) -> list[Any]:
    return [step.get("outputs") for step in outcome.steps] + [outcome.raw_text, outcome.error]


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


class _Race:
    """One candidate's race against one set of rules in force."""

    def __init__(self, verifier: Verifier, rule: Rule, current: RuleSet, base: list[float]) -> None:
        self.verifier, self.rule, self.current, self.base = verifier, rule, current, base
        self.candidate = current.with_rule(rule)
        self.diffs: dict[int, float] = {}
        self.bounds = iter(chunk_bounds(len(base)))
        self.pending: list[tuple[int, Future]] = []
        first = decide(self.diffs, base, verifier.settings)  # the rules in force may leave no room to gain at all
        self.decision: Decision | None = first if first.verdict is not Verdict.CONTINUE else None

    def start_chunk(self, *, speculative: bool = False) -> None:
        """Submit the next chunk; a speculative race (ahead of its turn) runs its first chunk only."""
        if self.pending or self.decision is not None or (speculative and self.diffs):
            return
        bound = next(self.bounds)
        todo = [i for i in self.verifier.order[:bound] if i not in self.diffs]
        ev = self.verifier.evaluator
        self.pending = [(i, ev.submit(self.candidate, self.verifier.valset[i], "verification")) for i in todo]

    def chunk_done(self) -> bool:
        return all(f.done() for _, f in self.pending)

    def finish_chunk(self) -> Decision:
        """Wait for the chunk in flight, then decide (and start the next chunk if the race goes on)."""
        results = [(i, f.result()) for i, f in self.pending]
        self.pending = []
        raise_if_incomplete([r for _, r in results], len(results))
        for i, outcome in results:
            assert isinstance(outcome, Outcome)
            self.diffs[i] = outcome.score - self.base[i]
        decision = decide(self.diffs, self.base, self.verifier.settings)
        if decision.verdict is not Verdict.CONTINUE:
            self.decision = decision
        return decision

    def scores(self) -> list[float]:
        return [self.base[i] + self.diffs[i] for i in range(len(self.base))]


class Verifier:
    def __init__(self, evaluator: Evaluator, valset: Sequence[dspy.Example], trainset: Sequence[dspy.Example],
                 settings: VerificationSettings, rng: random.Random,
                 progress: Callable[..., object] | None = None) -> None:
        self.evaluator = evaluator
        self.valset = list(valset)
        self.train_by_key = {example_key(ex): ex for ex in trainset}
        self.settings = settings
        self.rng = rng
        self.progress = progress
        self.order: list[int] = []

    def base_scores(self, ruleset: RuleSet) -> list[float]:
        outcomes = self.evaluator.run([(ruleset, ex) for ex in self.valset], phase="verification")
        return [o.score for o in outcomes]

    # -- screening ------------------------------------------------------------------------------------------------
    def screen(self, current: RuleSet, candidates: Sequence[Rule], mistakes: Mapping[str, Mistake]) -> list[Rule]:
        """Candidates ordered by evidence: the share of their own source mistakes they fix on the trainset (when
        screening is on), then the order they came in (the teacher's preference). Nobody is dropped here."""
        k = self.settings.screen_size
        fixed: dict[str, float] = {}
        if k > 0:
            plan = {rule.id: [self.train_by_key[m.example_key] for mid in rule.source_mistakes[:k]
                              if (m := mistakes.get(mid)) is not None and m.example_key in self.train_by_key]
                    for rule in candidates}
            jobs = [(current.with_rule(rule), ex) for rule in candidates for ex in plan[rule.id]]
            try:
                self.evaluator.run(jobs, phase="screening")
            except STOPPING_ERRORS as exc:
                logger.warning("screening stopped early (%s); ordering by what was measured", exc)
            for rule in candidates:
                pairs = [(self.evaluator.cached(current.with_rule(rule), ex), self.evaluator.cached(current, ex))
                         for ex in plan[rule.id]]
                pairs = [(new, old) for new, old in pairs if new is not None and old is not None]
                if pairs:
                    fixed[rule.id] = sum(new.score > old.score + EPS for new, old in pairs) / len(pairs)
        position = {r.id: i for i, r in enumerate(candidates)}
        return sorted(candidates, key=lambda r: (-fixed.get(r.id, 0.0), position[r.id]))

    # -- racing ---------------------------------------------------------------------------------------------------
    def run(self, current: RuleSet, candidates: Sequence[Rule], mistakes: Mapping[str, Mistake]) -> VerificationResult:
        """Screen and race ``candidates`` on top of ``current``. When the budget runs out, the student LM fails or a
        stop is requested, undecided candidates are rejected with that reason and everything decided so far
        stands: every accepted rule was verified on the whole valset."""
        result = VerificationResult(current, None)
        bar = None
        races: dict[str, _Race] = {}
        try:
            result.scores = self.base_scores(current)
            queue = self.screen(current, candidates, mistakes)
            self.order = racing_order(result.scores, self.settings.max_score, self.rng)
            bar = self.progress(total=len(queue), desc="Verifying rules", leave=False) if self.progress else None
            for position, rule in enumerate(queue):
                if not fits_predictor_budget(list(result.ruleset), rule):
                    rule.reject(f"not verified: predictor {rule.predictor!r} already holds the most rule text allowed "
                                f"({MAX_RULES_CHARS_PER_PREDICTOR} characters)")
                    continue
                for ahead in queue[position: position + 1 + self.settings.lookahead]:
                    race = races.get(ahead.id)
                    if race is None or race.current != result.ruleset:
                        races[ahead.id] = race = _Race(self, ahead, result.ruleset, result.scores)
                    race.start_chunk(speculative=ahead is not rule)
                decision = self._finish(races, rule.id)
                self._apply(rule, races.pop(rule.id), decision, result, mistakes)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(score=f"{sum(result.scores) / len(result.scores):.3f}", rules=len(result.ruleset))
        except STOPPING_ERRORS as exc:
            for rule in candidates:
                if rule.status == CANDIDATE:
                    rule.reject(f"not verified: {exc}")
            logger.warning("verification stopped early: %s", exc)
            result.stopped = str(exc)
        finally:
            if bar is not None:
                bar.close()
        return result

    def _adherence(self, rule: Rule, race: _Race, mistakes: Mapping[str, Mistake]) -> dict[str, Any] | None:
        """On the training mistakes the rule was written for when they were run (the screen), else on the valset
        examples the rules in force got wrong."""
        sources = [self.train_by_key[m.example_key] for mid in rule.source_mistakes
                   if (m := mistakes.get(mid)) is not None and m.example_key in self.train_by_key]
        found = adherence(self.evaluator, race.current, race.candidate, sources, "source mistakes")
        if found is None:
            failing = [self.valset[i] for i, s in enumerate(race.base) if s < self.settings.max_score - EPS]
            found = adherence(self.evaluator, race.current, race.candidate, failing, "valset failures")
        return found

    @staticmethod
    def _finish(races: dict[str, _Race], head: str) -> Decision:
        """Drive the head race to a decision, advancing speculative races whose chunks are done meanwhile."""
        race = races[head]
        while race.decision is None:
            race.start_chunk()
            for other in races.values():
                if other is not race and other.pending and other.chunk_done():
                    other.finish_chunk()
            race.finish_chunk()
        return race.decision

    def _apply(self, rule: Rule, race: _Race, decision: Decision, result: VerificationResult,
               mistakes: Mapping[str, Mistake]) -> None:
        result.decisions[rule.id] = decision
        if decision.verdict is Verdict.ACCEPT:
            rule.accept(decision.gain, decision.seen,
                        f"raised the valset score by {decision.gain:+.3f} over the {len(result.ruleset)} rule(s) "
                        "in force")
            rule.gain_ci = paired_ci([race.diffs[i] for i in range(len(race.base))])
            rule.adherence = self._adherence(rule, race, mistakes)
            result.ruleset, result.scores = race.candidate, race.scores()
        else:
            rule.reject(decision.reason, gain=decision.gain, evaluated_on=decision.seen)


def limit_candidates(pending: list[Rule], limit: int) -> list[Rule]:
    """The first ``limit`` candidates (they come in the teacher's order of preference); the rest are rejected."""
    for rule in pending[limit:]:
        rule.reject(f"not verified: more than max_candidates={limit} candidates this round, and the teacher "
                    "preferred the others")
    return pending[:limit]
