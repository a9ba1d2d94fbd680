"""Phase 3: keep only the rules that measurably help the student.

1. Screen (optional, cheap): each candidate is run on a few of the training mistakes it was written for. The
   result is evidence that orders the candidates, never a veto: any prompt change re-draws some answers of a real
   LM, so one or two samples cannot tell a helpful rule from a lucky neutral one.
2. Race on the valset (``racing.Selection``): candidates are added to the rules in force and scored on the valset
   in growing stratified chunks, several side by side, the best first; ``statistics.decide`` drops one as soon as
   it can no longer show a gain, and accepts one that finishes the valset with a gain whose lower confidence bound
   clears ``min_gain``. This is greedy forward selection: every addition raises the set's valset score, so the
   result never scores below the starting program, and a rule that adds nothing on top of those already accepted
   is rejected, so ties keep fewer rules.

Decisions are the same at any thread count.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dspy

from ..records import Mistake, Outcome
from ..rules import Adherence, Rule, RuleSet, RuleVerdict
from ..runtime.account import RequiredAccount
from ..runtime.evaluator import STOPPING_ERRORS, Evaluator, example_key
from ..runtime.forecast import calls_per_run
from ..runtime.metering import BudgetExhaustedError, Role
from .racing import Extension, Race, Racer, Selection
from .statistics import (
    EPS,
    Decision,
    SelectionSettings,
    Verdict,
    paired_ci,
    prior_variance,
    racing_order,
    shown_gain,
)

logger = logging.getLogger(__name__)



@dataclass
class VerificationResult:
    """The rules in force after verification, their valset scores (None if even the starting point could not be
    scored), a verdict on every candidate (``verdicts``: accepted, rejected, or not verified when it stopped early)
    and why verification stopped early (None if it finished)."""

    ruleset: RuleSet
    scores: list[float] | None
    candidates: list[Rule] = field(default_factory=list)  # the rules it was asked to verify
    verdicts: list[RuleVerdict] = field(default_factory=list)  # on the candidates and placements
    stopped: str | None = None
    decisions: dict[str, Decision] = field(default_factory=dict)
    placements: list[Rule] = field(default_factory=list)  # candidates raced again in another predictor
    raced_against: dict[str, RuleSet] = field(default_factory=dict)  # rule id -> the rules in force it last raced
    cause: BaseException | None = None  # what stopped it early (a used-up budget, a stop request, ...)


def adherence(evaluator: Evaluator, before: RuleSet, after: RuleSet, examples: Sequence[dspy.Example],
              where: str) -> Adherence | None:
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
    return Adherence(where, seen, changed, fixed, ignored=changed == 0)


def _outputs(outcome: Outcome) -> list[Any]:
    return [step.outputs for step in outcome.steps] + [outcome.raw_text, outcome.error]


class Verifier:
    def __init__(self, evaluator: Evaluator, valset: Sequence[dspy.Example], trainset: Sequence[dspy.Example],
                 settings: SelectionSettings, rng: random.Random, *, account: RequiredAccount,
                 predictors: Sequence[str] = (), progress: Callable[..., object] | None = None) -> None:
        self.evaluator = evaluator
        self.account = account
        self.predictors = list(predictors)
        self.valset = list(valset)
        self.trainset = list(trainset)
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
                pairs: list[tuple[Any, Any]]
                pairs = [(self.evaluator.cached(current.with_rule(rule), ex), self.evaluator.cached(current, ex))
                         for ex in plan[rule.id]]
                pairs = [(new, old) for new, old in pairs if new is not None and old is not None]
                if pairs:
                    fixed[rule.id] = sum(new.score > old.score + EPS for new, old in pairs) / len(pairs)
        position = {r.id: i for i, r in enumerate(candidates)}
        return sorted(candidates, key=lambda r: (-fixed.get(r.id, 0.0), position[r.id]))

    # -- racing ---------------------------------------------------------------------------------------------------
    def run(self, current: RuleSet, candidates: Sequence[Rule], mistakes: Mapping[str, Mistake], *,
            next_trainset: Sequence[dspy.Example] | None = None, hold: int = 0) -> VerificationResult:
        """Screen and race ``candidates`` on top of ``current``. When the budget runs out, the student LM fails or a
        stop is requested, undecided candidates are rejected with that reason and everything decided so far
        stands: every accepted rule was verified on the whole valset. The rules are not changed: the result holds a
        verdict on each. ``next_trainset`` (the next round's, if one
        may follow) can be run ahead on idle threads with the rules predicted to be in force at the end. ``hold``
        program runs of the budget are left for the confirmation of the returned rules."""
        result = VerificationResult(current, None, list(candidates))
        bar: Any = None
        selection: Selection | None = None
        try:
            result.scores = self.base_scores(current)
            queue = self.screen(current, candidates, mistakes)
            self.order = racing_order(result.scores, self.settings.max_score, self.rng)
            settings = replace(self.settings, prior_variance=prior_variance(result.scores, self.settings.max_score))
            selection = Selection(queue, current, result.scores, self.order, settings, predictors=self.predictors,
                                  runs=max(0, runs_left(self.account, self.calls_per_run) - hold),
                                  extension=self._extension(current, queue, mistakes))
            bar = self.progress(total=len(queue), desc="Verifying rules", leave=False) if self.progress else None

            def on_decided(done: Selection) -> None:
                if bar is not None:
                    bar.update(len(done.decisions) - bar.n)
                    bar.set_postfix(score=f"{sum(done.scores) / len(done.scores):.3f}", rules=len(done.in_force))

            Racer(self.evaluator, self.valset + self.trainset, selection, account=self.account,
                  calls_per_run=self.calls_per_run,
                  next_trainset=next_trainset, on_decided=on_decided).run()
            if selection.stopped is not None:  # the decisions' share of the student budget cannot pay for a race
                cause = BudgetExhaustedError(Role.STUDENT, self.evaluator.budget.limit(Role.STUDENT) or 0)
                result.stopped, result.cause = str(cause), cause
                logger.info("verification stopped early: %s (%s)", cause, selection.stopped)
        except STOPPING_ERRORS as exc:
            logger.info("verification stopped early: %s", exc)
            result.stopped, result.cause = str(exc), exc
        finally:
            if bar is not None:
                bar.close()
            if selection is not None:
                self._record(selection, result, mistakes)
            decided = {verdict.rule_id for verdict in result.verdicts}
            result.verdicts += [RuleVerdict.reject(rule, f"not verified: {result.stopped}")
                                for rule in [*candidates, *result.placements] if rule.id not in decided]
        return result

    def _extension(self, current: RuleSet, queue: Sequence[Rule], mistakes: Mapping[str, Mistake]) -> Extension | None:
        """The trainset examples near misses may go on to, when the round's first phase scored ``current`` on every
        one of them (no new run is needed for the base); each rule leaves out the mistakes it was written for."""
        if not self.settings.extend or not self.trainset:
            return None
        scores = self.evaluator.scores(current, self.trainset)
        if any(s is None for s in scores):
            return None
        n = len(self.valset)
        position = {example_key(ex): n + j for j, ex in enumerate(self.trainset)}
        order = [n + j for j in racing_order([s or 0.0 for s in scores], self.settings.max_score,
                                             random.Random(self.rng.randrange(1 << 30)))]
        excluded = {rule.id: frozenset(position[m.example_key] for mid in rule.source_mistakes
                                       if (m := mistakes.get(mid)) is not None and m.example_key in position)
                    for rule in queue}
        return Extension(current, {n + j: s or 0.0 for j, s in enumerate(scores)}, order, excluded)

    def _record(self, selection: Selection, result: VerificationResult, mistakes: Mapping[str, Mistake]) -> None:
        """The selection's decisions as verdicts: the accepted rules in the order they joined, then the rejected."""
        result.placements = list(selection.placements)
        result.raced_against = {rule_id: race.current for rule_id, race in selection.races.items() if race.own}
        decision: Decision | None
        for rule, race in selection.accepted:
            decision = selection.decisions[rule.id]
            low, high = paired_ci([race.diffs[i] for i in range(len(race.base))])
            n_val = len(race.base)
            where = ("the valset score" if decision.seen <= n_val else
                     f"the score on {n_val} valset and {decision.seen - n_val} trainset examples together")
            result.verdicts.append(RuleVerdict.accept(
                rule, gain=decision.gain, evaluated_on=decision.seen,
                reason=f"raised {where} by {decision.gain:+.3f} over the {len(race.current)} rule(s) in force "
                       f"(lower confidence bound {decision.lower:+.3f})",
                gain_ci=(low, high), adherence=self._adherence(rule, race, mistakes)))
            result.decisions[rule.id] = decision
        for rule in [*selection.queue]:
            decision = selection.decisions.get(rule.id)
            if decision is None or decision.verdict is Verdict.ACCEPT:
                continue
            result.verdicts.append(RuleVerdict.reject(rule, decision.reason, evaluated_on=decision.seen,
                                                      gain=decision.gain if decision.seen else None))
            result.decisions[rule.id] = decision
        result.ruleset, result.scores = selection.in_force, selection.scores

    def _adherence(self, rule: Rule, race: Race, mistakes: Mapping[str, Mistake]) -> Adherence | None:
        """On the training mistakes the rule was written for when they were run (the screen), else on the valset
        examples the rules in force got wrong."""
        sources = [self.train_by_key[m.example_key] for mid in rule.source_mistakes
                   if (m := mistakes.get(mid)) is not None and m.example_key in self.train_by_key]
        found = adherence(self.evaluator, race.current, race.candidate, sources, "source mistakes")
        if found is None:
            failing = [self.valset[i] for i, s in enumerate(race.base) if s < self.settings.max_score - EPS]
            found = adherence(self.evaluator, race.current, race.candidate, failing, "valset failures")
        return found


def runs_left(account: RequiredAccount, calls_per_run: float) -> float:
    """Program runs the decisions may still spend (inf: no budget)."""
    left = account.left()
    return left if math.isinf(left) else math.floor(left / max(1.0, calls_per_run) + 1e-9)


def returned_rules(evaluator: Evaluator, valset: Sequence[dspy.Example], trainset: Sequence[dspy.Example],
                   accepted: RuleSet, baseline: list[float], settings: SelectionSettings, *,
                   held_back: Sequence[dspy.Example] = (), calls_per_run: float = 1.0) -> tuple[RuleSet, str | None]:
    """The rules to return: the longest prefix of the accepted path whose gain over the starting instructions is
    shown to be real on examples the selection never scored. The selection raced on ``valset``, so a gain there is
    optimistic (the best of many noisy measurements, and any prompt change re-draws answers the starting prompt got
    wrong by chance).

    With ``held_back`` valset examples and the budget to run them, a prefix passes when its gain there, against the
    starting instructions run there too, is shown at ``final_z``: an unbiased confirmation. Without, it passes on the
    valset alone only at the strict ``strict_z``, else (no held-back examples) on the valset and the trainset together
    at ``final_z`` (one trainset pass per prefix, when the account can pay for it and the starting instructions'
    trainset scores are known). Every run is booked
    as required work. The starting instructions (no rule) when no prefix passes; the second value says why rules
    were left out, or is None."""
    settings = replace(settings, prior_variance=prior_variance(baseline, settings.max_score))
    if held_back and evaluator.account.left() >= 2 * len(held_back) * calls_per_run:
        return _confirmed_on_held_back(evaluator, held_back, accepted, settings, calls_per_run)
    if held_back:  # the budget cannot pay for the confirmation: the strict valset test decides, on cached scores
        logger.info("the budget left cannot run the %d held-back valset examples: the rules to return are checked "
                    "strictly on the valset", len(held_back))
        trainset = ()
    strict = replace(settings, final_z=max(settings.final_z, settings.strict_z))
    start = evaluator.scores(RuleSet(), trainset)
    confirm = bool(trainset) and all(s is not None for s in start)
    rules = list(accepted)
    for k in range(len(rules), 0, -1):
        prefix = RuleSet(rules[:k])
        scores = evaluator.scores(prefix, valset)
        if any(s is None for s in scores):
            continue
        new = [s for s in scores if s is not None]
        shown, lower = shown_gain(new, baseline, strict)
        if not shown and confirm and evaluator.account.left() >= len(trainset) * calls_per_run:
            try:
                outcomes = evaluator.run([(prefix, ex) for ex in trainset], phase="verification")
            except STOPPING_ERRORS as exc:  # what finished is cached; the strict valset test decides
                logger.warning("the confirmation on the trainset stopped early: %s", exc)
                confirm = False
            else:
                shown, lower = shown_gain(new + [o.score for o in outcomes],
                                          baseline + [s for s in start if s is not None], settings)
        if shown:
            return prefix, _left_out(len(rules), k, lower)
    return RuleSet(), _left_out(len(rules), 0, None)


def _confirmed_on_held_back(evaluator: Evaluator, held_back: Sequence[dspy.Example], accepted: RuleSet,
                            settings: SelectionSettings, calls_per_run: float) -> tuple[RuleSet, str | None]:
    rules, n = list(accepted), len(held_back)
    try:
        start = [o.score for o in evaluator.run([(RuleSet(), ex) for ex in held_back], phase="verification")]
        for k in range(len(rules), 0, -1):
            if evaluator.account.left() < n * calls_per_run:
                break
            prefix = RuleSet(rules[:k])
            scores = [o.score for o in evaluator.run([(prefix, ex) for ex in held_back], phase="verification")]
            shown, lower = shown_gain(scores, start, settings)
            if shown:
                return prefix, _left_out(len(rules), k, lower, HELD_BACK)
    except STOPPING_ERRORS as exc:
        logger.warning("the confirmation on the held-back valset examples stopped early: %s", exc)
    return RuleSet(), _left_out(len(rules), 0, None, HELD_BACK)


HELD_BACK = "on the held-back valset examples"
STRICT = "on the valset at the strict bound, nor with a trainset pass"


def _left_out(accepted: int, kept: int, lower: float | None, where: str = STRICT) -> str | None:
    if kept == accepted:
        return None
    if kept:
        return (f"left out: the gain of the {accepted} accepted rules over the starting instructions was not shown "
                f"to be real {where}; the first {kept} show it (lower confidence bound {lower:+.3f})")
    return (f"left out: the gain of the {accepted} accepted rule(s) over the starting instructions was not shown to "
            f"be real {where}")


def limit_candidates(pending: list[Rule], limit: int) -> tuple[list[Rule], list[RuleVerdict]]:
    """The first ``limit`` candidates (they come in the teacher's order of preference), and a verdict rejecting
    each of the rest."""
    return pending[:limit], [
        RuleVerdict.reject(rule, f"not verified: more than max_candidates={limit} candidates this round, and the "
                                 "teacher preferred the others") for rule in pending[limit:]]
