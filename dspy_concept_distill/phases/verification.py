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

The statistics of a race are in ``statistics``; running races, several at once when threads are spare, in
``racing``. Decisions are the same at any thread count.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from ..records import Mistake, Outcome
from ..rules import CANDIDATE, MAX_RULES_CHARS_PER_PREDICTOR, Rule, RuleSet, fits_predictor_budget
from ..runtime.evaluator import STOPPING_ERRORS, Evaluator, example_key
from ..runtime.forecast import calls_per_run
from .racing import Race, Racer, Track
from .statistics import EPS, Decision, Verdict, VerificationSettings, paired_ci, racing_order

logger = logging.getLogger(__name__)


@dataclass
class VerificationResult:
    """The rules in force after verification, their valset scores (None if even the starting point could not be
    scored) and why verification stopped early (None if it finished)."""

    ruleset: RuleSet
    scores: list[float] | None
    stopped: str | None = None
    decisions: dict[str, Decision] = field(default_factory=dict)
    cause: BaseException | None = None  # what stopped it early (a used-up budget, a stop request, ...)


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
        self.calls_per_run = 1.0  # the mean LM calls of one program run on the valset baseline

    def base_scores(self, ruleset: RuleSet) -> list[float]:
        outcomes = self.evaluator.run([(ruleset, ex) for ex in self.valset], phase="verification")
        self.calls_per_run = calls_per_run(outcomes)
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
                logger.info("screening stopped early (%s); ordering by what was measured", exc)
            for rule in candidates:
                pairs = [(self.evaluator.cached(current.with_rule(rule), ex), self.evaluator.cached(current, ex))
                         for ex in plan[rule.id]]
                pairs = [(new, old) for new, old in pairs if new is not None and old is not None]
                if pairs:
                    fixed[rule.id] = sum(new.score > old.score + EPS for new, old in pairs) / len(pairs)
        position = {r.id: i for i, r in enumerate(candidates)}
        return sorted(candidates, key=lambda r: (-fixed.get(r.id, 0.0), position[r.id]))

    # -- racing ---------------------------------------------------------------------------------------------------
    def run(self, current: RuleSet, candidates: Sequence[Rule], mistakes: Mapping[str, Mistake], *,
            next_trainset: Sequence[dspy.Example] | None = None) -> VerificationResult:
        """Screen and race ``candidates`` on top of ``current``. When the budget runs out, the student LM fails or a
        stop is requested, undecided candidates are rejected with that reason and everything decided so far
        stands: every accepted rule was verified on the whole valset. ``next_trainset`` (the next round's, if one
        may follow) can be run ahead on idle threads with the rules predicted to be in force at the end."""
        result = VerificationResult(current, None)
        bar = None
        try:
            result.scores = self.base_scores(current)
            queue = self.screen(current, candidates, mistakes)
            self.order = racing_order(result.scores, self.settings.max_score, self.rng)
            racer = Racer(Track(self.evaluator, self.valset, self.order, self.settings, self.calls_per_run,
                                None if next_trainset is None else list(next_trainset)))
            bar = self.progress(total=len(queue), desc="Verifying rules", leave=False) if self.progress else None
            for position, rule in enumerate(queue):
                if not fits_predictor_budget(list(result.ruleset), rule):
                    rule.reject(f"not verified: predictor {rule.predictor!r} already holds the most rule text allowed "
                                f"({MAX_RULES_CHARS_PER_PREDICTOR} characters)")
                    continue
                race = racer.decide(queue, position, result.ruleset, result.scores)
                self._apply(rule, race, race.decision, result, mistakes)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(score=f"{sum(result.scores) / len(result.scores):.3f}", rules=len(result.ruleset))
        except STOPPING_ERRORS as exc:
            for rule in candidates:
                if rule.status == CANDIDATE:
                    rule.reject(f"not verified: {exc}")
            logger.info("verification stopped early: %s", exc)
            result.stopped, result.cause = str(exc), exc
        finally:
            if bar is not None:
                bar.close()
        return result

    def _adherence(self, rule: Rule, race: Race, mistakes: Mapping[str, Mistake]) -> dict[str, Any] | None:
        """On the training mistakes the rule was written for when they were run (the screen), else on the valset
        examples the rules in force got wrong."""
        sources = [self.train_by_key[m.example_key] for mid in rule.source_mistakes
                   if (m := mistakes.get(mid)) is not None and m.example_key in self.train_by_key]
        found = adherence(self.evaluator, race.current, race.candidate, sources, "source mistakes")
        if found is None:
            failing = [self.valset[i] for i, s in enumerate(race.base) if s < self.settings.max_score - EPS]
            found = adherence(self.evaluator, race.current, race.candidate, failing, "valset failures")
        return found

    def _apply(self, rule: Rule, race: Race, decision: Decision, result: VerificationResult,
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
