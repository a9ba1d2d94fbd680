"""Racing candidates on the valset, several at once when threads are spare.

A ``Race`` scores one candidate (the rules in force plus one rule) on the valset in the racing order and is
decided at the chunk boundaries by ``decisions.decide``, so it stops as soon as the candidate provably cannot
reach ``min_gain`` or is a clear loser.

``Racer`` decides the candidates one after another, each against the rules in force at its turn: greedy forward
selection. It runs in waves: it plans a wave (the next chunk of the candidate in front, then, with threads to
spare, work ahead), starts it, waits for all of it, and takes the chunks that finished. Work ahead is:

- the later chunks of the candidate in front, if it is on course to be accepted (its gain so far is at least
  ``min_gain``);
- chunks of the candidates behind it, each against the rules in force it is predicted to meet at its turn: those
  in force now plus every candidate before it whose race predicts acceptance. One starts only once the candidate
  before it has evidence (a finished chunk), and runs more than one chunk ahead only when it too predicts
  acceptance, so a wrong prediction wastes little.

A decision only ever sees the chunks before its boundary, against the rules in force at its turn, so every
decision is the one a 1-thread run takes. A wave's plan depends only on outcomes already taken (never on which
job happened to finish first), so a run makes the same requests every time at a given thread count: a rerun
answered by DSPy's cache or resumed from a checkpoint pays nothing twice. Speculation only uses threads a chunk of
the candidate in front leaves idle, and only budget left after every candidate still to decide could be raced
over the whole valset, so it never starves the in-order decisions of the round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Future, wait
from contextlib import suppress
from dataclasses import dataclass

import dspy

from .budget import STUDENT
from .decisions import EPS, Decision, Verdict, VerificationSettings, chunk_bounds, decide
from .evaluation import STOPPING_ERRORS, Evaluator, Outcome, raise_if_incomplete
from .rules import CANDIDATE, Rule, RuleSet, fits_predictor_budget


@dataclass
class Track:
    """What every race of one verification shares."""

    evaluator: Evaluator
    valset: list[dspy.Example]
    order: list[int]  # valset indices in racing order
    settings: VerificationSettings
    calls_per_run: int = 1  # the most LM calls one program run took on the valset baseline


class Race:
    """One candidate's race against one set of rules in force.

    ``base`` is the valset scores of the rules in force, or, for a speculative race, the race whose candidate
    is predicted to be in force at this one's turn: those scores are known once that race is accepted (it then
    saw the whole valset). Until then this race decides nothing and runs its first chunk at most.
    """

    def __init__(self, track: Track, rule: Rule, current: RuleSet, base: list[float] | Race) -> None:
        self.track, self.rule, self.current, self.base_source = track, rule, current, base
        self.candidate = current.with_rule(rule)
        self.bounds = chunk_bounds(len(track.valset))
        self.own: dict[int, float] = {}  # the candidate's valset scores of the chunks taken, by example index
        self.chunk = 0  # chunks taken
        self.sent = 0  # examples submitted, in racing order
        self.pending: dict[int, Future] = {}
        self.decision: Decision | None = None
        self.update()

    @property
    def base(self) -> list[float] | None:
        source = self.base_source
        if not isinstance(source, Race):
            return source
        accepted = source.decision is not None and source.decision.verdict is Verdict.ACCEPT
        return source.scores() if accepted else None

    @property
    def diffs(self) -> dict[int, float]:
        base = self.base
        return {} if base is None else {i: score - base[i] for i, score in self.own.items()}

    def update(self) -> None:
        """Decide on the chunks taken so far, once the base scores are known."""
        base = self.base
        if self.decision is None and base is not None:
            decision = decide(self.diffs, base, self.track.settings)
            if decision.verdict is not Verdict.CONTINUE:
                self.decision = decision

    def predicts_accept(self) -> bool:
        """Accepted, or undecided with a gain of at least ``min_gain`` so far."""
        if self.decision is not None:
            return self.decision.verdict is Verdict.ACCEPT
        diffs = self.diffs
        return bool(diffs) and sum(diffs.values()) / len(diffs) >= self.track.settings.min_gain - EPS

    def wanted(self, *, deep: bool) -> int:
        """Examples to submit to reach the next chunk boundary (the end of the valset if ``deep``); before the
        base is known, the first chunk at most."""
        if self.decision is not None:
            return 0
        limit = len(self.track.order) if self.base is not None else self.bounds[0]
        target = limit if deep else min(limit, self.bounds[self.chunk])
        return max(0, target - self.sent)

    def submit(self, count: int) -> list[Future]:
        """Start the next ``count`` examples in racing order."""
        todo = self.track.order[self.sent:self.sent + count]
        self.sent += len(todo)
        ev, valset = self.track.evaluator, self.track.valset
        for i in todo:
            self.pending[i] = ev.submit(self.candidate, valset[i], "verification")
        return [self.pending[i] for i in todo]

    def take(self) -> None:
        """Take every chunk whose jobs are all done, in order, deciding after each as a 1-thread run does; after a
        decision, later results are not looked at. A chunk some of whose jobs did not run (budget, stop, student
        LM failure) raises why; its finished results stay cached, and it is submitted again on the next ask."""
        while self.decision is None and self.chunk < len(self.bounds) and self.bounds[self.chunk] <= self.sent:
            first = self.bounds[self.chunk - 1] if self.chunk else 0
            chunk = self.track.order[first:self.bounds[self.chunk]]
            if not all(self.pending[i].done() for i in chunk):
                return
            results = [self.pending[i].result() for i in chunk]
            try:
                raise_if_incomplete(results, len(results))
            except STOPPING_ERRORS:
                self.pending, self.sent = {}, first
                raise
            for i, outcome in zip(chunk, results, strict=True):
                assert isinstance(outcome, Outcome)
                self.own[i] = outcome.score
                del self.pending[i]
            self.chunk += 1
            self.update()
        if self.decision is not None:
            self.pending = {}

    def scores(self) -> list[float]:
        """The candidate's valset scores, once it has seen the whole valset."""
        return [self.own[i] for i in range(len(self.track.valset))]


class Racer:
    """Decides candidates in queue order, racing ahead in waves (see the module docstring)."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.races: dict[tuple[str, RuleSet], Race] = {}

    def decide(self, queue: Sequence[Rule], position: int, in_force: RuleSet, scores: list[float]) -> Race:
        """Race ``queue[position]`` against ``in_force`` (valset ``scores``) to a decision."""
        head = self._race(queue[position], in_force, scores)
        while head.decision is None:
            wave = self._plan(queue, position, head, in_force, scores)
            wait(wave)
            head.take()  # raises why the chunk in front could not run
            for race in self.races.values():
                if race is not head and race.pending:
                    with suppress(*STOPPING_ERRORS):  # left for its turn
                        race.take()
        return head

    def _race(self, rule: Rule, in_force: RuleSet, base: list[float] | Race) -> Race:
        race = self.races.get((rule.id, in_force))
        if race is None or (race.base is None and not isinstance(base, Race)):
            race = self.races[(rule.id, in_force)] = Race(self.track, rule, in_force, base)
        race.update()
        return race

    def _plan(self, queue: Sequence[Rule], position: int, head: Race, in_force: RuleSet,
              scores: list[float]) -> list[Future]:
        """Start one wave: the next chunk of the race in front, whole (at any thread count), then work ahead while
        threads and spare budget allow."""
        wave = head.submit(head.wanted(deep=False))
        threads = self.track.evaluator.executor.num_threads
        if threads <= head.bounds[0]:
            return wave  # a first chunk keeps every thread busy: racing ahead would add calls for little time
        room = [threads - len(wave), self._spare_calls(queue, position) // self.track.calls_per_run]
        if head.predicts_accept():
            wave += self._feed(head, room, deep=True)
        before, base = head, scores
        for rule in queue[position + 1:]:
            if min(room) <= 0 or (before.decision is None and not before.own):
                break  # no threads or budget left, or no evidence yet on the candidate in front of this one
            if before.predicts_accept():
                in_force, base = before.candidate, before
            if rule.status != CANDIDATE or not fits_predictor_budget(list(in_force), rule):
                continue
            before = self._race(rule, in_force, base)
            wave += self._feed(before, room, deep=before.predicts_accept())
        return wave

    @staticmethod
    def _feed(race: Race, room: list[float], *, deep: bool) -> list[Future]:
        """Submit what ``race`` wants, as far as ``room`` ([threads, program runs]) allows; updates ``room``."""
        count = int(min(race.wanted(deep=deep), *room))
        room[0] -= count
        room[1] -= count
        return race.submit(count) if count > 0 else []

    def _spare_calls(self, queue: Sequence[Rule], position: int) -> float:
        """Student calls racing ahead may spend: the budget left, less a whole valset for each candidate still to
        decide in order, the one in front included."""
        remaining = self.track.evaluator.budget.remaining(STUDENT)
        if remaining is None:
            return math.inf
        undecided = 1 + sum(1 for rule in queue[position + 1:] if rule.status == CANDIDATE)
        return remaining - len(self.track.valset) * undecided * self.track.calls_per_run
