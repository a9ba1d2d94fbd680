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
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import dspy

from .budget import STUDENT
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
    """One candidate's race against one set of rules in force.

    ``base`` is the valset scores of the rules in force, or, for a speculative race, the race whose candidate
    is predicted to be in force at this one's turn: its scores are known once that race is accepted (it then
    saw the whole valset), and this race decides nothing until then, so it runs one chunk at most meanwhile.
    """

    def __init__(self, verifier: Verifier, rule: Rule, current: RuleSet, base: list[float] | _Race) -> None:
        self.verifier, self.rule, self.current, self.base_source = verifier, rule, current, base
        self.candidate = current.with_rule(rule)
        self.own: dict[int, float] = {}  # this candidate's valset scores so far, by example index
        self.bounds = chunk_bounds(len(verifier.valset))
        self.chunk = 0  # chunks finished
        self.pending: list[list[tuple[int, Future]]] = []  # chunks in flight, oldest first
        self.decision: Decision | None = None
        self.update()

    @property
    def base(self) -> list[float] | None:
        source = self.base_source
        if isinstance(source, _Race):
            return source.scores() if source.decision is not None and source.decision.verdict is Verdict.ACCEPT \
                else None
        return source

    @property
    def diffs(self) -> dict[int, float]:
        base = self.base
        return {} if base is None else {i: score - base[i] for i, score in self.own.items()}

    def update(self) -> None:
        """Decide on the chunks finished so far, once the base scores are known (the decision a 1-thread run
        takes at the same chunk boundary)."""
        base = self.base
        if self.decision is None and base is not None:
            decision = decide(self.diffs, base, self.verifier.settings)
            if decision.verdict is not Verdict.CONTINUE:
                self.decision = decision

    @property
    def submitted(self) -> int:
        """Chunks finished or in flight."""
        return self.chunk + len(self.pending)

    def can_start(self) -> bool:
        """Undecided with a chunk left to submit; before its base is known, one chunk at most."""
        if self.decision is not None or self.submitted >= len(self.bounds):
            return False
        return self.base is not None or self.submitted == 0

    def next_chunk(self) -> list[int]:
        k = self.submitted
        return self.verifier.order[self.bounds[k - 1] if k else 0:self.bounds[k]]

    def start_chunk(self) -> int:
        """Submit the next chunk (behind any still in flight); returns its size."""
        todo = self.next_chunk()
        ev = self.verifier.evaluator
        self.pending.append([(i, ev.submit(self.candidate, self.verifier.valset[i], "verification")) for i in todo])
        return len(todo)

    def in_flight(self) -> list[Future]:
        return [f for chunk in self.pending for _, f in chunk if not f.done()]

    def chunk_ready(self) -> bool:
        return bool(self.pending) and all(f.done() for _, f in self.pending[0])

    def finish_chunk(self) -> None:
        """Take the oldest finished chunk's results and decide if the base is known; once decided, later chunks
        are not looked at (a decision only ever sees the chunks before it, as in a 1-thread run). A chunk some of
        whose jobs did not run (budget, stop, student LM failure) raises why; its finished results stay cached,
        and the chunk runs again, from the cache, when the race is next asked for."""
        chunk = self.pending[0]
        results = [(i, f.result()) for i, f in chunk]
        try:
            raise_if_incomplete([r for _, r in results], len(results))
        except STOPPING_ERRORS:
            self.pending = []
            raise
        self.pending.pop(0)
        for i, outcome in results:
            assert isinstance(outcome, Outcome)
            self.own[i] = outcome.score
        self.chunk += 1
        self.update()
        if self.decision is not None:
            self.pending = []

    def predicts_accept(self, min_gain: float) -> bool:
        """Whether this rule is likely to be in force after its turn: accepted, or undecided with a gain of at
        least ``min_gain`` so far."""
        if self.decision is not None:
            return self.decision.verdict is Verdict.ACCEPT
        diffs = self.diffs
        return bool(diffs) and sum(diffs.values()) / len(diffs) >= min_gain - EPS

    def scores(self) -> list[float]:
        """The candidate's valset scores, once it has seen the whole valset."""
        return [self.own[i] for i in range(len(self.verifier.valset))]


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
        self.calls_per_run = 1  # the most LM calls one program run took on the valset baseline

    def base_scores(self, ruleset: RuleSet) -> list[float]:
        outcomes = self.evaluator.run([(ruleset, ex) for ex in self.valset], phase="verification")
        self.calls_per_run = max([1, *(o.calls for o in outcomes)])
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
        races: dict[tuple[str, RuleSet], _Race] = {}
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
                race = self._race(races, rule, result)
                while race.decision is None:
                    if not race.pending and race.can_start():
                        race.start_chunk()
                    if not race.chunk_ready():  # only while it waits (a run resumed from the cache never does)
                        self._speculate(races, queue, position, race, result)
                    self._advance(races, race)
                self._apply(rule, race, race.decision, result, mistakes)
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

    def _race(self, races: dict[tuple[str, RuleSet], _Race], rule: Rule, result: VerificationResult) -> _Race:
        """The race of ``rule`` against ``result.ruleset`` (one started speculatively, or a new one)."""
        key = (rule.id, result.ruleset)
        if key not in races or races[key].base is None:  # (a speculative race's base is known by its turn)
            races[key] = _Race(self, rule, result.ruleset, result.scores)
        races[key].update()
        return races[key]

    def _speculate(self, races: dict[tuple[str, RuleSet], _Race], queue: Sequence[Rule], position: int,
                   head: _Race, result: VerificationResult) -> None:
        """Use spare threads and budget: first the later chunks of the race in front if it is on course to be
        accepted, then the candidates behind it, in order.

        Each candidate behind runs against the rules in force it is predicted to meet at its turn: those in
        force now plus every candidate before it whose race predicts acceptance. It starts only once the one
        before it has evidence (a decision or a finished chunk), and runs ahead by more than one chunk only when
        it too predicts acceptance, so a wrong prediction wastes little. Budget: speculation only spends what is
        left after every candidate from the one in front onwards could still be raced over the whole valset, so
        the in-order decisions of the round are never short of calls.
        """
        threads = self.evaluator.executor.num_threads
        if threads <= head.bounds[0]:
            return  # a first chunk keeps every thread busy: speculation would add calls for little time
        in_flight = sum(len(r.in_flight()) for r in races.values())
        room = [threads - in_flight, self._spare_calls(queue, position, in_flight)]  # threads, calls
        self._feed(head, room, deep=head.predicts_accept(self.settings.min_gain))
        in_force, base, before = result.ruleset, result.scores, head
        for rule in queue[position + 1:]:
            if room[0] <= 0 or room[1] <= 0:
                return
            if before.decision is None and not before.own:
                return  # no evidence yet on the candidate in front of this one
            if before.predicts_accept(self.settings.min_gain):
                in_force, base = before.candidate, before
            if rule.status != CANDIDATE or not fits_predictor_budget(list(in_force), rule):
                continue
            race = races.get((rule.id, in_force))
            if race is None:
                race = races[(rule.id, in_force)] = _Race(self, rule, in_force, base)
            race.update()
            self._feed(race, room, deep=race.predicts_accept(self.settings.min_gain))
            before = race

    def _feed(self, race: _Race, room: list[float], *, deep: bool) -> None:
        """Start ``race``'s next chunk (all its remaining chunks if ``deep``) while ``room`` (threads, calls)
        allows; ``room`` is updated in place."""
        while room[0] > 0 and race.can_start() and (deep or not race.pending):
            cost = len(race.next_chunk()) * self.calls_per_run
            if cost > room[1]:
                return
            started = race.start_chunk()
            room[0] -= started
            room[1] -= started * self.calls_per_run

    def _spare_calls(self, queue: Sequence[Rule], position: int, in_flight: int) -> float:
        """Student calls speculation may spend: the budget left, less the runs in flight and a whole valset for
        each candidate still to decide in order, the one in front included."""
        remaining = self.evaluator.budget.remaining(STUDENT)
        if remaining is None:
            return math.inf
        undecided = 1 + sum(1 for rule in queue[position + 1:] if rule.status == CANDIDATE)
        return remaining - (in_flight + len(self.valset) * undecided) * self.calls_per_run

    @staticmethod
    def _advance(races: dict[tuple[str, RuleSet], _Race], head: _Race) -> None:
        """Wait until a job finishes, then take every finished chunk, oldest first. The race in front raises why
        its chunk could not run; a speculative race's failure is left for its turn."""
        waiting = [f for r in races.values() for f in r.in_flight()]
        if waiting:
            wait(waiting, return_when=FIRST_COMPLETED)
        for race in races.values():
            while race.chunk_ready():
                if race is head:
                    race.finish_chunk()
                    continue
                try:
                    race.finish_chunk()
                except STOPPING_ERRORS:
                    break

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
