"""Racing candidates on the valset, several at once when threads are spare.

A ``Race`` scores one candidate (the rules in force plus one rule) on the valset in the racing order and is
decided at the chunk boundaries by ``statistics.decide``, so it stops as soon as the candidate provably cannot
reach ``min_gain`` or is a clear loser.

``Racer`` decides the candidates one after another, each against the rules in force at its turn: greedy forward
selection. Work is submitted in units (a chunk or part of one) and its jobs are taken one at a time, strictly in
the order they were submitted: the racer waits for the oldest job not yet taken, takes it, plans, and submits more
while fewer than ``num_threads x (1 + QUEUE_SHARE)`` jobs are submitted and not yet taken. So a thread that
finishes is given new work at once (not when the rest of its chunk is done), and the jobs queued beyond the threads
start as soon as a thread is free, also while the oldest job is a slow one. The next chunk of the candidate in
front always runs; with threads to spare, so does work ahead:

- the later chunks of the candidate in front, if it is on course to be accepted (its gain so far is at least
  ``min_gain``), or while it has no evidence yet (threads would otherwise idle until its first chunk is taken);
- chunks of the candidates behind it, each against the rules in force it is predicted to meet at its turn: those
  in force now plus every candidate before it whose race predicts acceptance. One starts only once the candidate
  before it has evidence (a finished chunk), and runs more than one chunk ahead only when it predicts
  acceptance, or while threads would otherwise idle until its first chunk is taken. A candidate the predicted
  rules leave nothing to gain is skipped, as it will most likely be refused before it costs a call;
- once every candidate is under way, the next round's trainset (when one may follow), with the rules predicted to
  be in force at the end of the round, if every prediction behind them comes from a race half-way through.

A decision only ever sees the chunks before its boundary, against the rules in force at its turn, so every
decision is the one a 1-thread run takes. Each plan depends only on the jobs already taken, in submission order
(never on which job happened to finish first), so a run makes the same requests every time at a given thread
count: a rerun answered by DSPy's cache or resumed from a checkpoint pays nothing twice. Racing ahead only uses
places the chunk in front leaves free, and only budget left after every candidate still to decide could be raced
over the whole valset (the race in front may run ahead on its own share of that), so it never starves the in-order
decisions of the round. Work ahead whose prediction fails is paid for and thrown away: ``benchmarks/speculation.py``
measures how much across the task family.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, wait
from contextlib import suppress
from dataclasses import dataclass

import dspy

from ..records import Outcome
from ..rules import CANDIDATE, Rule, RuleSet, fits_predictor_budget
from ..runtime.evaluator import STOPPING_ERRORS, Evaluator, raise_if_incomplete
from ..runtime.metering import STUDENT
from .statistics import EPS, Decision, Verdict, VerificationSettings, chunk_bounds, decide

# Jobs queued beyond the threads, as a share of them: a thread that finishes starts queued work at once, and one
# slow request holds back less (jobs are taken in submission order). More queued work is more work ahead, so more
# of it is thrown away when a prediction fails (benchmarks/speculation.py measures what that costs).
QUEUE_SHARE = 0.5


@dataclass
class Track:
    """What every race of one verification shares."""

    evaluator: Evaluator
    valset: list[dspy.Example]
    order: list[int]  # valset indices in racing order
    settings: VerificationSettings
    calls_per_run: float = 1.0  # the mean LM calls of one program run on the valset baseline
    next_trainset: list[dspy.Example] | None = None  # the next round's trainset (None: no next round)


@dataclass
class Unit:
    """Examples of one race submitted together (race None: the next round's trainset, run ahead)."""

    race: Race | None
    examples: list[int]
    futures: list[Future]
    taken: int = 0  # examples taken so far, in order


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
        self.arrived: set[int] = set()  # examples of pending whose unit was taken
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
        """Accepted, or undecided with a gain of at least ``min_gain`` so far (before the base is known: over the
        examples its base race has taken too)."""
        if self.decision is not None:
            return self.decision.verdict is Verdict.ACCEPT
        source = self.base_source
        if self.base is None and isinstance(source, Race):
            diffs = {i: score - source.own[i] for i, score in self.own.items() if i in source.own}
        else:
            diffs = self.diffs
        return bool(diffs) and sum(diffs.values()) / len(diffs) >= self.track.settings.min_gain - EPS

    def hopeless(self) -> bool:
        """Whether the rules this race is predicted to run against look likely to leave too little to gain. With
        a known base this is exact; before (the base race still running), the base race's scores so far stand
        for it, unseen examples at their mean. A guess that only steers racing ahead, never a decision."""
        base, source = self.base, self.base_source
        if base is None and isinstance(source, Race) and source.own:
            mean = sum(source.own.values()) / len(source.own)
            base = [source.own.get(i, mean) for i in range(len(self.track.valset))]
        if base is None:
            return False
        settings = self.track.settings
        room = sum(settings.max_score - b for b in base)
        return room < settings.min_gain * len(base) - EPS

    def wanted(self, *, deep: bool) -> int:
        """Examples to submit to reach the next chunk boundary (the end of the valset if ``deep``); before the
        base is known, the first chunk at most, unless the race the base waits for predicts acceptance."""
        if self.decision is not None:
            return 0
        source = self.base_source
        known = self.base is not None or (isinstance(source, Race) and source.predicts_accept())
        limit = len(self.track.order) if known else self.bounds[0]
        target = limit if deep else min(limit, self.bounds[self.chunk])
        return max(0, target - self.sent)

    def submit(self, count: int, *, urgent: bool = False) -> Unit | None:
        """Start the next ``count`` examples in racing order (``urgent``: before every job still waiting)."""
        todo = self.track.order[self.sent:self.sent + count]
        if not todo:
            return None
        self.sent += len(todo)
        ev, valset = self.track.evaluator, self.track.valset
        for i in todo:
            self.pending[i] = ev.submit(self.candidate, valset[i], "verification", urgent=urgent)
        return Unit(self, todo, [self.pending[i] for i in todo])

    @property
    def busy(self) -> bool:
        """Some submitted examples are not taken yet."""
        return len(self.pending) > len(self.arrived)

    def take(self, arrived: Sequence[int]) -> None:
        """Mark the examples of a taken unit, then take every chunk whose examples have all arrived, in order,
        deciding after each as a 1-thread run does; after a decision, later results are not looked at. A chunk
        some of whose jobs did not run (budget, stop, student LM failure) raises why; its finished results stay
        cached, and it is submitted again on the next ask."""
        self.arrived.update(i for i in arrived if i in self.pending)
        while self.decision is None and self.chunk < len(self.bounds) and self.bounds[self.chunk] <= self.sent:
            first = self.bounds[self.chunk - 1] if self.chunk else 0
            chunk = self.track.order[first:self.bounds[self.chunk]]
            if not self.arrived.issuperset(chunk):
                return
            results = [self.pending[i].result() for i in chunk]
            try:
                raise_if_incomplete(results, len(results))
            except STOPPING_ERRORS:
                self.pending, self.arrived, self.sent = {}, set(), first
                raise
            for i, outcome in zip(chunk, results, strict=True):
                assert isinstance(outcome, Outcome)
                self.own[i] = outcome.score
                del self.pending[i]
            self.arrived.difference_update(chunk)
            self.chunk += 1
            self.update()
        if self.decision is not None:
            self.pending, self.arrived = {}, set()

    def scores(self) -> list[float]:
        """The candidate's valset scores, once it has seen the whole valset."""
        return [self.own[i] for i in range(len(self.track.valset))]


class Racer:
    """Decides candidates in queue order, racing ahead (see the module docstring)."""

    def __init__(self, track: Track) -> None:
        self.track = track
        self.races: dict[tuple[str, RuleSet], Race] = {}
        self.units: deque[Unit] = deque()  # submitted and not yet wholly taken, oldest first
        self.untaken = 0  # jobs submitted and not yet taken
        threads = track.evaluator.executor.num_threads
        self.window = threads + math.ceil(QUEUE_SHARE * threads)  # jobs submitted and not yet taken, at most
        self.run_ahead: dict[RuleSet, int] = {}  # next-round trainset examples submitted, by predicted rule set
        self.budget_left = self._budget_left()  # program runs this racer may still start (inf: no budget)

    def decide(self, queue: Sequence[Rule], position: int, in_force: RuleSet, scores: list[float]) -> Race:
        """Race ``queue[position]`` against ``in_force`` (valset ``scores``) to a decision."""
        head = self._race(queue[position], in_force, scores)
        while head.decision is None:
            if not head.busy:
                # the chunk in front, whole, at any thread count, before the work ahead still waiting
                self._submit(head.submit(head.wanted(deep=False), urgent=True))
            self._plan(queue, position, head, scores)
            self._take_oldest(head)
        return head

    def _take_oldest(self, head: Race) -> None:
        """Wait for the oldest job not yet taken, and take it: one job at a time, in submission order, so a thread
        that finishes is given new work at once instead of when the rest of its unit is done."""
        unit = self.units[0]
        index, future = unit.examples[unit.taken], unit.futures[unit.taken]
        wait([future])
        unit.taken += 1
        self.untaken -= 1
        if unit.taken == len(unit.examples):
            self.units.popleft()
        if unit.race is head:
            head.take([index])  # raises why the chunk in front could not run
        elif unit.race is not None:
            with suppress(*STOPPING_ERRORS):  # left for its turn
                unit.race.take([index])

    def _submit(self, unit: Unit | None) -> int:
        if unit is None:
            return 0
        self.units.append(unit)
        self.untaken += len(unit.examples)
        self.budget_left -= len(unit.examples)
        return len(unit.examples)

    def _race(self, rule: Rule, in_force: RuleSet, base: list[float] | Race) -> Race:
        race = self.races.get((rule.id, in_force))
        if race is None or (race.base is None and not isinstance(base, Race)):
            race = self.races[(rule.id, in_force)] = Race(self.track, rule, in_force, base)
        race.update()
        return race

    def _plan(self, queue: Sequence[Rule], position: int, head: Race, scores: list[float]) -> None:
        """Submit work ahead while fewer jobs than threads are submitted and not taken, and budget is spare.

        In order: the later chunks of the race in front if it predicts acceptance; for each race behind, its next
        chunk (or all it wants if it predicts acceptance); the first race behind that has no evidence yet gets
        all it wants when threads would otherwise idle (unless the rules it is predicted to meet leave nothing to
        gain); and, once every candidate is under way, the next round's trainset with the rules predicted to be in
        force at the end.
        """
        threads = self.track.evaluator.executor.num_threads
        if threads <= head.bounds[0]:
            return  # a first chunk keeps every thread busy: racing ahead would add calls for little time
        n = len(self.track.valset)
        behind = n * sum(1 for rule in queue[position + 1:] if rule.status == CANDIDATE)  # each may race the valset
        # The head runs ahead on its own share of the budget, never on the share kept for the candidates behind it.
        room = [self.window - self.untaken, self.budget_left - behind]
        if head.predicts_accept() or (head.decision is None and not head.own):
            self._feed(head, room, deep=True)  # on course to be accepted, or threads would idle until its first chunk
        room[1] = self.budget_left - behind - (n - head.sent)  # work behind it leaves the head all it may still need
        in_force, base, before = head.current, scores, head
        guesses: list[Race] = []  # the races whose predicted acceptance shapes the rules predicted in force
        for rule in queue[position + 1:]:
            if min(room) <= 0 or (before.decision is None and not before.own):
                return  # no threads or budget left, or no evidence yet on the candidate in front of this one
            if before.predicts_accept():
                in_force, base = before.candidate, before
                guesses.append(before)
            if rule.status != CANDIDATE or not fits_predictor_budget(list(in_force), rule):
                continue
            race = self._race(rule, in_force, base)
            if race.decision is None and not race.own and race.hopeless():
                continue  # likely refused before it costs a call: skipped, taken as a rejection
            before = race
            if not race.busy or race.predicts_accept():
                self._feed(race, room, deep=race.predicts_accept())
            if race.decision is None and not race.own:
                self._feed(race, room, deep=True)  # threads would idle until its first chunk is taken
        if before.predicts_accept():
            in_force = before.candidate
            guesses.append(before)
        if all(2 * len(r.own) >= len(self.track.valset) for r in guesses if r.decision is None):
            self._run_next_round(in_force, head.current, room)  # predicted by races at least half-way through

    def _run_next_round(self, final: RuleSet, start: RuleSet, room: list[float]) -> None:
        """Start the next round's trainset run with the rules predicted to be in force at the end of this one."""
        trainset = self.track.next_trainset
        if trainset is None or final == start or min(room) <= 0:
            return  # no next round, or none predicted (a round that accepts nothing is the last)
        done = self.run_ahead.get(final, 0)
        todo = list(range(done, min(len(trainset), done + int(min(room)))))
        if not todo:
            return
        self.run_ahead[final] = todo[-1] + 1
        ev = self.track.evaluator
        self._submit(Unit(None, todo, [ev.submit(final, trainset[i], "mistakes") for i in todo]))
        room[0] -= len(todo)
        room[1] -= len(todo)

    def _feed(self, race: Race, room: list[float], *, deep: bool) -> None:
        """Submit what ``race`` wants as far as ``room`` ([queue places, program runs]) allows; updates ``room``."""
        count = int(min(race.wanted(deep=deep), *room))
        if count > 0:
            taken = self._submit(race.submit(count))
            room[0] -= taken
            room[1] -= taken

    def _budget_left(self) -> float:
        """Program runs the student budget allows from here (calls left / the mean calls of one run)."""
        remaining = self.track.evaluator.budget.remaining(STUDENT)
        return math.inf if remaining is None else math.floor(remaining / self.track.calls_per_run + 1e-9)
