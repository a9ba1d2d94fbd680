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

from .persistence.journal import Journal, Resumed, attach
from .phases.statistics import hold_back, train_sample
from .records import BatchReply, Mistake, RoundSummary
from .rules import Rule, RuleSet, split_instructions
from .runtime.evaluator import EvalCache, Evaluator
from .runtime.executor import STOP_FILE, Executor, StopSignal
from .runtime.ledger import Ledger
from .runtime.metering import STUDENT, TEACHER, Budget, metered
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
    teacher_lm: dspy.BaseLM | None  # metered
    journal: Journal
    executor: Executor
    stop: StopSignal
    rng: random.Random
    resumed: Resumed
    current: RuleSet = field(default_factory=RuleSet)
    rules: list[Rule] = field(default_factory=list)
    mistakes: list[Mistake] = field(default_factory=list)
    replies: list[BatchReply] = field(default_factory=list)
    summaries: list[RoundSummary] = field(default_factory=list)
    raced_against: dict[str, RuleSet] = field(default_factory=dict)  # rule id -> the rules in force it last raced
    baseline_scores: list[float] | None = None
    val_scores: list[float] | None = None
    threshold: float | None = None
    stopped: str | None = None
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

    def record_reply(self, reply: BatchReply) -> None:
        self.replies.append(reply)
        self.journal.reply(reply)

    def end_runs(self) -> None:
        """No new LM request from here: jobs not started are dropped, the program runs in flight (racing ahead)
        stop at their next request, and every request the LMs received is booked before the result is made."""
        self.budget.close("the run is over")
        self.executor.close()

    def fresh(self, rule: Rule) -> bool:
        """Whether measuring ``rule`` again would be new evidence: the rules in force changed since it was raced."""
        return self.raced_against.get(rule.id) != self.current

    def stop_with(self, exc: BaseException) -> None:
        self.stopped = str(exc)
        logger.warning("stopping early, keeping the rules verified so far: %s", exc)


@contextmanager
def open_state(student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example],
               metric: Any, teacher_lm: dspy.BaseLM | None, settings: RunSettings,
               limits: dict[str, Any],
               checkpoint: tuple[str | None, str, str]) -> Iterator[CompileState]:
    """A run's state, with its thread pool, journal and signal handlers open for the block and closed after it.

    ``checkpoint`` is ``(directory, journal name, fingerprint)``; ``limits`` the budgets: student_calls,
    teacher_calls, tokens, cost_usd."""
    directory, name, fp = checkpoint
    journal = Journal(directory, name, fp)
    journal.check_writable()
    program = student.deepcopy()
    base, inherited = inherited_rules(student)
    budget = Budget(Ledger(), limits["student_calls"], limits["teacher_calls"], dspy.settings.usage_tracker,
                    max_tokens=limits.get("tokens"), max_cost_usd=limits.get("cost_usd"))
    cache = EvalCache()
    resumed = attach(journal, cache)
    stop = StopSignal(Path(directory) / STOP_FILE if directory is not None else None)
    executor = Executor(settings.num_threads)
    evaluator = Evaluator(program, base, MetricAdapter(metric), budget, executor, stop, cache)
    teacher = metered(teacher_lm, budget, TEACHER) if teacher_lm is not None else None
    plan = random.Random(f"{settings.seed}/data")  # apart from the run's rng: the plan changes no other draw
    raced, held = hold_back(len(valset), plan)
    sample = train_sample(len(trainset), settings.train_sample, plan)
    state = CompileState(settings, program, base, trainset, valset, evaluator, budget, teacher, journal, executor,
                         stop, random.Random(settings.seed), resumed, inherited=inherited,
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
        logger.debug("run closed: %d student and %d teacher requests", state.ledger.calls(STUDENT),
                     state.ledger.calls(TEACHER))


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
            origin = {"source": "the program's instructions", "earlier": None}
            if found is not None:
                origin = {"source": "an earlier compile (program.distillation)",
                          "earlier": {k: copy.deepcopy(getattr(found, k)) for k in EARLIER_FIELDS}}
            rules.append(Rule(text=text, predictor=name, inherited=origin))
    return base, rules
