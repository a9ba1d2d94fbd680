"""One object per compile (or ``verify``): everything the run holds, from the evaluator and budget to the rules and
scores, so the phases take ``(state, round)`` instead of a dozen values."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from .errors import DistillationError
from .persistence.journal import Journal, Resumed, attach
from .phases.statistics import hold_back, train_sample
from .records import BatchReply, Limits, Mistake, RoundSummary
from .rules import Rule, RuleSet, split_instructions
from .runtime.evaluator import EvalCache, Evaluator
from .runtime.executor import STOP_FILE, Executor, StopSignal
from .runtime.ledger import Ledger
from .runtime.metering import Budget, Role, install
from .runtime.metric import MetricAdapter, metric_max
from .settings import RunSettings

logger = logging.getLogger(__name__)

@dataclass
class CompileState:
    settings: RunSettings
    program: dspy.Module  # a private deep copy of the caller's program
    base_instructions: dict[str, str]
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    evaluator: Evaluator
    budget: Budget
    teacher_lm: dspy.BaseLM | None  # the caller's: induction meters its requests
    journal: Journal
    executor: Executor
    stop: StopSignal
    rng: random.Random
    resumed: Resumed
    limits: Limits
    current: RuleSet = field(default_factory=RuleSet)
    rules: list[Rule] = field(default_factory=list)
    mistakes: list[Mistake] = field(default_factory=list)
    replies: list[BatchReply] = field(default_factory=list)
    summaries: list[RoundSummary] = field(default_factory=list)
    raced_against: dict[str, RuleSet] = field(default_factory=dict)  # rule id -> the rules in force it last raced
    baseline_scores: list[float] | None = None
    val_scores: list[float] | None = None
    stopped: str | None = None  # why the run ended early (None: it did not)
    stop_cause: BaseException | None = None  # the signal that ended it: a used-up budget, a stop request, ...
    failure: DistillationError | None = None  # the run could not produce evidence: raised (or returned) at the end
    decisions: int = 0  # candidate rules raced on the valset or decided without a run
    inherited: list[Rule] = field(default_factory=list)  # the rules the program's instructions carried, to re-check
    raced: list[dspy.Example] = field(default_factory=list)  # the valset examples races run on (all, or a half)
    held_back: list[dspy.Example] = field(default_factory=list)  # the other half, which confirms what is returned
    train_runs: list[dspy.Example] = field(default_factory=list)  # the trainset examples the student runs on

    @property
    def ledger(self) -> Ledger:
        return self.budget.ledger

    @property
    def names(self) -> list[str]:
        return list(self.base_instructions)

    @property
    def max_score(self) -> float:
        return metric_max(self.evaluator.cache.values())

    @property
    def min_gain(self) -> float:
        """The gain a rule must be shown to exceed: the user's ``min_gain``, else 0 (any gain shown to be real)."""
        return self.settings.min_gain if self.settings.min_gain is not None else 0.0

    def set_limits(self, limits: Limits) -> None:
        """Replace the run's limits (a new record; the budget enforces the student limit from now on)."""
        self.limits = limits
        self.budget.set_limit(Role.STUDENT, limits.student_calls)

    def end_runs(self) -> None:
        """No new LM request from here: jobs not started are dropped, the program runs in flight (racing ahead)
        stop at their next request, and every request the LMs received is booked before the result is made."""
        self.budget.close("the run is over")
        self.executor.close()

    def fresh(self, rule: Rule) -> bool:
        """Whether measuring ``rule`` again would be new evidence: the rules in force changed since it was raced."""
        return self.raced_against.get(rule.id) != self.current

    def end_early(self, reason: str, cause: BaseException | None = None) -> None:
        """End the run early for ``reason`` (``cause``: a used-up budget, a stop request, a failing student LM),
        keeping what was verified; the first reason is the one reported. The one warning is logged at the end."""
        if self.stopped is None:
            self.stopped, self.stop_cause = reason, cause
        logger.info("stopping early, keeping the rules verified so far: %s", reason)

    def stop_with(self, exc: BaseException) -> None:
        self.end_early(str(exc), exc)


@contextmanager
def open_state(student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example],
               metric: Any, teacher_lm: dspy.BaseLM | None, settings: RunSettings,
               limits: Limits,
               checkpoint: tuple[str | None, str, str]) -> Iterator[CompileState]:
    """A run's state, with its thread pool, journal and signal handlers open for the block and closed after it.

    ``checkpoint`` is ``(directory, journal name, fingerprint)``."""
    directory, name, fp = checkpoint
    journal = Journal(directory, name, fp)
    journal.check_writable()
    program = student.deepcopy()
    base, inherited = inherited_rules(student)
    budget = Budget(Ledger(), limits.student_calls, limits.teacher_calls, dspy.settings.usage_tracker,
                    max_tokens=limits.tokens, max_cost_usd=limits.cost_usd)
    cache = EvalCache()
    resumed = attach(journal, cache)
    stop = StopSignal(Path(directory) / STOP_FILE if directory is not None else None)
    executor = Executor(settings.num_threads)
    evaluator = Evaluator(program, base, MetricAdapter(metric), budget, executor, stop, cache)
    install()  # DSPy's LM entry point meters every request made inside a run (see runtime.metering)
    plan = random.Random(f"{settings.seed}/data")  # apart from the run's rng: the plan changes no other draw
    raced, held = hold_back(len(valset), plan)
    sample = train_sample(len(trainset), settings.train_sample, plan)
    state = CompileState(settings, program, base, trainset, valset, evaluator, budget, teacher_lm, journal, executor,
                         stop, random.Random(settings.seed), resumed, limits, inherited=inherited,
                         raced=[valset[i] for i in raced], held_back=[valset[i] for i in held],
                         train_runs=[trainset[i] for i in sample])
    try:
        with stop.installed():
            yield state
    except BaseException:  # a second Ctrl-C, a failure: the runs in flight stop at their next LM request
        budget.close("the run was interrupted")
        raise
    finally:
        executor.close()
        journal.close()
        logger.debug("run closed: %d student and %d teacher requests", state.ledger.calls(Role.STUDENT),
                     state.ledger.calls(Role.TEACHER))


EARLIER_FIELDS = ("round", "gain", "gain_ci", "evaluated_on", "reason", "source_mistakes", "inherited")


def inherited_rules(program: dspy.Module) -> tuple[dict[str, str], list[Rule]]:
    """The program's base instructions per predictor, and the rules they already carry (an optimized program's, as
    ``render_instructions`` wrote them) as candidates marked ``inherited``: from an earlier compile when the program
    carries its ``distillation`` (with what that compile measured), else from the instructions alone."""
    earlier_result = getattr(program, "distillation", None)
    earlier = {(r.predictor, r.text.lower()): r for r in getattr(earlier_result, "ruleset", None) or ()
               if isinstance(r, Rule)}
    base, rules = {}, []
    for name, predictor in program.named_predictors():
        base[name], texts = split_instructions(predictor.signature.instructions)
        for text in texts:
            found = earlier.get((name, text.lower()))
            origin: dict[str, Any] = {"source": "the program's instructions", "earlier": None}
            if found is not None:
                origin = {"source": "an earlier compile (program.distillation)",
                          "earlier": {k: copy.deepcopy(getattr(found, k)) for k in EARLIER_FIELDS}}
            rules.append(Rule(text=text, predictor=name, inherited=origin))
    return base, rules
