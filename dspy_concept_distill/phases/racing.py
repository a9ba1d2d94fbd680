"""Racing candidate rules on the valset: the policy that decides (``Selection``) and the runner that feeds it
(``Racer``), several candidates at once.

``Selection`` is greedy forward selection, best first. A ``Race`` scores one candidate (the rules in force plus one
rule) on the valset in the racing order, chunk by chunk, and is decided at the chunk boundaries by
``statistics.decide``. Candidates are taken in queue order (the teacher's preference, or the screen's), ``window``
at a time: every candidate of the window that was never measured first runs its first chunk (all at once), then the
one with the best mean gain so far, the leader, runs its next chunk, until it is accepted (it ran the whole valset
and its gain is shown to be real), dropped (it cannot show a gain any more), or overtaken by another. An accepted
rule joins the rules in force, and the races of the others start again against them: the gain they showed against
the earlier rules orders them until they have evidence against the new ones. So two
candidates written for the same mistakes (a rule that helps a subgroup and hurts the rest, and its conditional
form) are compared, and the better one is decided first. In a program of several predictors, a rule that could not
show a gain where the teacher put it, but did not hurt either, is raced once more in each other predictor.

The policy is a pure function of the outcomes it was given, in the order it asked for them, and it spends only the
budget of the ``RequiredAccount``: its decisions are the same at any thread count.

``Racer`` runs what the policy asks for, each batch at once (urgent: before any work ahead), and fills spare threads
with work ahead: what the policy is predicted to ask for next, found by running a copy of it on predicted outcomes
(every unseen gain at the candidate's mean so far), and the next round's trainset with the rules predicted to be in
force at the end. Work ahead is planned only when a batch is handed out, from the outcomes the policy has seen, so
a run makes the same requests every time at a given thread count (a rerun answered by DSPy's cache or resumed from a
checkpoint pays nothing twice); it never has more than the account's reserve outstanding, and with no more threads
than a first chunk keeps busy there is none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, wait
from contextlib import suppress
from dataclasses import dataclass, field

import dspy

from ..records import Outcome
from ..rules import Rule, RuleSet, fits_predictor_budget
from ..runtime.account import RequiredAccount
from ..runtime.evaluator import Evaluator, raise_if_incomplete
from .statistics import EPS, Decision, SelectionSettings, Verdict, chunk_bounds, decide

# Jobs queued beyond the threads, as a share of them: a thread that finishes starts queued work at once.
QUEUE_SHARE = 0.5
AHEAD_BATCHES = 1  # batches of the policy, followed on predicted outcomes, whose work is run ahead


@dataclass(eq=False)
class Race:
    """One candidate against one set of rules in force (``base``: their valset scores, the whole valset)."""

    rule: Rule
    current: RuleSet
    base: list[float]
    prior: float | None = None  # the mean gain it showed against earlier rules in force: orders, never decides
    own: dict[int, float] = field(default_factory=dict)  # the candidate's scores taken, by example index
    decision: Decision | None = None
    extension: list[int] = field(default_factory=list)  # further examples (index >= len(base)) a near miss may run
    extension_base: dict[int, float] = field(default_factory=dict)  # the rules in force's scores there

    def __post_init__(self) -> None:
        self.candidate = self.current.with_rule(self.rule)

    def base_of(self, index: int) -> float:
        return self.base[index] if index < len(self.base) else self.extension_base[index]

    @property
    def diffs(self) -> dict[int, float]:
        """Gains on the valset examples taken."""
        n = len(self.base)
        return {i: score - self.base[i] for i, score in self.own.items() if i < n}

    @property
    def extension_diffs(self) -> dict[int, float]:
        n = len(self.base)
        return {i: score - self.extension_base[i] for i, score in self.own.items() if i >= n}

    @property
    def seen(self) -> int:
        return len(self.own)

    @property
    def mean(self) -> float:
        """The mean gain so far (the prior before anything is seen against these rules in force)."""
        if self.own:
            return sum(score - self.base_of(i) for i, score in self.own.items()) / len(self.own)
        return self.prior if self.prior is not None else 0.0

    def decide(self, settings: SelectionSettings) -> Decision:
        if settings.extend and self.extension:
            return decide(self.diffs, self.base, settings, extension=self.extension_diffs,
                          extension_size=len(self.extension))
        return decide(self.diffs, self.base, settings)

    def scores(self) -> list[float]:
        """The candidate's valset scores, once it has seen the whole valset."""
        return [self.own[i] for i in range(len(self.base))]

    def copy(self) -> Race:
        race = Race(self.rule, self.current, self.base, self.prior, dict(self.own), self.decision, self.extension,
                    self.extension_base)
        race.candidate = self.candidate
        return race


@dataclass(frozen=True)
class Extension:
    """Trainset examples a near miss may go on to: the rules in force at the start of the round (whose trainset
    scores the round's first phase measured), their scores by example index (valset size + trainset position),
    the order the examples are raced in, and the indices each rule may not use (the mistakes it was written for)."""

    start: RuleSet
    base: dict[int, float]
    order: list[int]
    excluded: dict[str, frozenset[int]]


Job = tuple[Race, int]  # a race and a valset index


class Selection:
    """The decisions of one verification, best first (see the module docstring). Ask ``next_batch()`` what to run,
    give the scores to ``take()``; ``decisions`` holds every rule's decision, ``in_force``/``scores`` the result."""

    def __init__(self, queue: Iterable[Rule], in_force: RuleSet, scores: list[float], order: list[int],
                 settings: SelectionSettings, *, predictors: Sequence[str] = (), runs: float = math.inf,
                 extension: Extension | None = None) -> None:
        self.queue = list(queue)
        self.extension = extension
        self.in_force, self.scores = in_force, list(scores)
        self.order, self.settings = order, settings
        self.bounds = chunk_bounds(len(order))
        self.predictors = list(predictors)
        self.runs = runs  # program runs the decisions may still spend
        self.races: dict[str, Race] = {}
        self.decisions: dict[str, Decision] = {}
        self.accepted: list[tuple[Rule, Race]] = []  # in the order they joined the rules in force
        self.placements: list[Rule] = []  # rules raced again in another predictor (they joined the queue)
        self.stopped: str | None = None  # why the policy stopped before every candidate was decided

    # -- asking and taking ------------------------------------------------------------------------------------------
    def next_batch(self) -> list[Job] | None:
        """The valset runs the next decision needs (they can all run at once), or None when every candidate is
        decided or the budget cannot pay for what the next decision needs (``stopped`` says so)."""
        while self.stopped is None:
            window = self._window()
            if not window:
                return None
            fresh = [race for race in window if not race.own and race.prior is None]  # never measured
            batch = [(race, i) for race in fresh for i in self.order[:self.bounds[0]]]
            if not batch:
                leader = max(window, key=lambda race: (race.mean, -self.queue.index(race.rule)))
                batch = [(leader, i) for i in self._next_chunk(leader)]
            if len(batch) > self.runs:
                self.stopped = "the student budget cannot pay for the next race"
                return None
            return batch
        return None

    def _next_chunk(self, race: Race) -> list[int]:
        """The next chunk of ``race``'s examples: the valset in racing order, then its extension in two halves."""
        if race.seen < len(self.order):
            start = next(b for b in [0, *self.bounds] if b >= race.seen)
            end = next(b for b in self.bounds if b > race.seen)
            return self.order[start:end]
        done = race.seen - len(self.order)
        half = math.ceil(len(race.extension) / 2)
        return race.extension[done:half] if done < half else race.extension[done:]

    def take(self, scores: dict[Job, float]) -> None:
        """The scores of a batch ``next_batch`` asked for (all of it); decides what they settle."""
        self.runs -= len(scores)
        touched: list[Race] = []
        for (race, index), score in scores.items():
            race.own[index] = score
            if race not in touched:
                touched.append(race)
        finished = []
        for race in touched:
            decision = race.decide(self.settings)
            if decision.verdict is Verdict.CONTINUE:
                continue
            if decision.verdict is Verdict.ACCEPT:
                finished.append((race, decision))
            else:
                self._reject(race, decision)
        if finished:  # a whole valset in one chunk: the best of them joins, the others race again against it
            race, decision = max(finished, key=lambda found: (found[0].mean, -self.queue.index(found[0].rule)))
            self._accept(race, decision)

    # -- state ------------------------------------------------------------------------------------------------------
    def _window(self) -> list[Race]:
        """The races of the first ``window`` undecided candidates that can join the rules in force (those that
        cannot are refused on the way, at no cost)."""
        out: list[Race] = []
        for rule in self.queue:
            if len(out) >= self.settings.window:
                break
            if rule.id in self.decisions:
                continue
            race = self._race(rule)
            if race is None:
                continue
            if not race.own:
                decision = decide({}, race.base, self.settings)  # nothing left to gain: refused before it costs
                if decision.verdict is not Verdict.CONTINUE:
                    self._reject(race, decision)
                    continue
            out.append(race)
        return out

    def _race(self, rule: Rule) -> Race | None:
        race = self.races.get(rule.id)
        if race is not None and race.current == self.in_force:
            return race
        if not fits_predictor_budget(list(self.in_force), rule):
            self.decisions[rule.id] = Decision(Verdict.CANNOT_REACH, 0.0, 0, (
                f"not verified: predictor {rule.predictor!r} already holds the most rule text allowed"))
            return None
        prior = race.mean if race is not None else None
        race = self.races[rule.id] = Race(rule, self.in_force, self.scores, prior)
        found = self.extension
        if self.settings.extend and found is not None and found.start == self.in_force:
            excluded = found.excluded.get(rule.id, frozenset())
            race.extension = [i for i in found.order if i not in excluded]
            race.extension_base = found.base
        return race

    def _accept(self, race: Race, decision: Decision) -> None:
        self.decisions[race.rule.id] = decision
        race.decision = decision
        self.accepted.append((race.rule, race))
        self.in_force, self.scores = race.candidate, race.scores()

    def _reject(self, race: Race, decision: Decision) -> None:
        self.decisions[race.rule.id] = decision
        race.decision = decision
        if decision.gain >= -EPS and race.seen and len(self.predictors) > 1 and race.rule.placement_of is None:
            self._place_elsewhere(race.rule)

    def _place_elsewhere(self, rule: Rule) -> None:
        """The rule could not show a gain where it was put, and did not hurt there: race it in each other
        predictor, right after it in the queue."""
        known = {r.id for r in self.queue}
        position = self.queue.index(rule) + 1
        for name in self.predictors:
            moved = Rule(text=rule.text, predictor=name, source_mistakes=list(rule.source_mistakes),
                         round=rule.round, batch=rule.batch, attempts=rule.attempts, placement_of=rule.id)
            if name != rule.predictor and moved.id not in known:
                self.queue.insert(position, moved)
                self.placements.append(moved)
                position += 1

    def fork(self) -> Selection:
        """A copy to run ahead on predicted outcomes; the original is not changed by anything done to the copy."""
        twin = Selection.__new__(Selection)
        twin.__dict__.update(self.__dict__)
        twin.queue, twin.scores = list(self.queue), list(self.scores)
        twin.races = {rule_id: race.copy() for rule_id, race in self.races.items()}
        twin.decisions, twin.accepted = dict(self.decisions), list(self.accepted)
        twin.placements = list(self.placements)
        return twin


def predicted_score(race: Race, index: int, max_score: float) -> float:
    """A guess at the candidate's score on an example it has not run: the base score moved by its mean gain."""
    return min(max_score, max(0.0, race.base_of(index) + race.mean))


class Racer:
    """Runs a ``Selection`` on the evaluator, with work ahead on spare threads (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, examples: Sequence[dspy.Example], selection: Selection, *,
                 account: RequiredAccount, calls_per_run: float = 1.0,
                 next_trainset: Sequence[dspy.Example] | None = None,
                 on_decided: Callable[[Selection], None] | None = None) -> None:
        self.evaluator, self.valset, self.selection = evaluator, list(examples), selection  # valset, then trainset
        self.account, self.calls_per_run = account, max(1.0, calls_per_run)
        self.next_trainset = None if next_trainset is None else list(next_trainset)
        self.on_decided = on_decided
        threads = evaluator.executor.num_threads
        # A first chunk keeps up to that many threads busy on its own: below that, no work ahead (it would add
        # requests for little time); above it, a queue's worth beyond the threads.
        self.window = 0 if threads <= selection.bounds[0] else threads + math.ceil(QUEUE_SHARE * threads)

    def run(self) -> None:
        """Decide every candidate, or raise why not (budget, stop, student LM failure) with the decisions so far
        kept in the selection."""
        selection = self.selection
        while (batch := selection.next_batch()) is not None:
            futures = {job: self._required(job) for job in batch}
            self._plan()
            wait(list(futures.values()))
            results = [future.result() for future in futures.values()]
            raise_if_incomplete(results, len(results))
            scores = {}
            for job, outcome in zip(futures, results, strict=True):
                assert isinstance(outcome, Outcome)
                race, index = job
                self.account.charge((self.evaluator.key(race.candidate),
                                     self.evaluator.example_key_of(self.valset[index])), outcome.calls)
                scores[job] = outcome.score
            selection.take(scores)
            if self.on_decided is not None:
                self.on_decided(selection)

    def _required(self, job: Job) -> Future:
        race, index = job
        return self.evaluator.submit(race.candidate, self.valset[index], "verification", urgent=True)

    # -- work ahead ---------------------------------------------------------------------------------------------------
    def _room(self) -> int:
        """Jobs one plan may run ahead: a queue's worth beyond the threads, and no more than the account's reserve
        less what was run ahead and not required since (counted, not timed, so plans do not depend on timing)."""
        if not self.window:
            return 0
        return max(0, min(self.window, math.floor(self.account.reserve / self.calls_per_run) - self.account.ahead))

    def _ahead(self, ruleset: RuleSet, example: dspy.Example, phase: str) -> bool:
        key = (self.evaluator.key(ruleset), self.evaluator.example_key_of(example))
        if not self.account.run_ahead(key):
            return False
        with suppress(RuntimeError):  # the executor closed: the run is over
            self.evaluator.submit(ruleset, example, phase)
        return True

    def _predicted_end(self) -> RuleSet | None:
        """The rules predicted to be in force at the end of the round, when the evidence says so: the leader has
        raced half the valset or more and is on course to be accepted, and every other undecided candidate has
        raced and shown no gain (None otherwise, or when nothing would change)."""
        twin = self.selection.fork()
        window = twin._window()
        if not window:
            return None
        leader = max(window, key=lambda race: (race.mean, -twin.queue.index(race.rule)))
        if leader.seen * 2 < len(twin.order) or leader.mean <= twin.settings.min_gain:
            return None
        for rule in twin.queue:
            race = twin.races.get(rule.id)
            if rule.id in twin.decisions or race is leader:
                continue
            if race is None or (not race.own and race.prior is None) or race.mean > 0:
                return None  # not raced yet, or it showed a gain: it may still join
        return leader.candidate

    def _plan(self) -> None:
        """Run ahead what a copy of the policy, fed predicted outcomes, asks for in its next ``AHEAD_BATCHES``
        batches, then the next round's trainset with the rules predicted to be in force at the end of this one."""
        room = self._room()
        if room <= 0:
            return
        twin = self.selection.fork()
        twin.runs = math.inf
        batch = twin.next_batch()  # the batch being run now, already submitted
        max_score = twin.settings.max_score
        for _ in range(AHEAD_BATCHES):
            if batch is None:
                break
            twin.take({(race, i): race.own.get(i, predicted_score(race, i, max_score)) for race, i in batch})
            batch = twin.next_batch()
            for race, index in batch or []:
                if room > 0:
                    room -= self._ahead(race.candidate, self.valset[index], "verification")
        final = self._predicted_end() if room > 0 and self.next_trainset is not None else None
        if final is not None:
            for example in self.next_trainset or []:
                if room <= 0:
                    return
                room -= self._ahead(final, example, "mistakes")
