"""The end of a run: the optional leave-one-out ablation, the returned program (never worse on the valset than
the caller's), its candidate programs, and the DistillationResult with the score trajectory."""

from __future__ import annotations

import copy
import logging
from typing import Any

import dspy

from .errors import (
    BudgetExhaustedError,
    BudgetTooSmallError,
    DistillationError,
    LMUnavailableError,
    RunClosedError,
    StopRequestedError,
    StudentLMError,
)
from .records import CostForecast, TrajectoryStep, mean_score
from .reporting.result import DistillationResult
from .rules import RuleSet, RuleStatus
from .runtime.metering import Role
from .state import CompileState
from .text import clip_text, fmt_score

logger = logging.getLogger(__name__)


def finish(state: CompileState, student: dspy.Module, forecast: CostForecast) -> dspy.Module:
    """The optimized copy of ``student`` with ``distillation`` and ``candidate_programs`` attached."""
    baseline, final = mean_score(state.baseline_scores), mean_score(state.val_scores)
    current = state.current
    if final is None or baseline is None or final < baseline:
        # Never hand back something worse than (or not measured against) what the caller gave us.
        if len(current):
            logger.warning("returning the original instructions: the rule set could not be shown to help")
        current, final = RuleSet(), baseline
    if state.held_back:  # the scores a person reads are over the whole valset once the held-back half was run
        whole = [state.evaluator.scores(rules, state.valset) for rules in (RuleSet(), current)]
        if all(s is not None for scores in whole for s in scores):
            baseline, final = (mean_score([s for s in scores if s is not None]) for scores in whole)
    student = _without_results(student)
    optimized = current.apply(student, state.base_instructions)
    optimized._compiled = True
    optimized.candidate_programs = _candidates(state, student, current, optimized)
    optimized.distillation = DistillationResult(
        baseline_score=baseline, final_score=final, ruleset=current, rules=state.rules, mistakes=state.mistakes,
        replies=state.replies, usage=state.ledger, rounds=state.summaries, stopped=state.stopped,
        trainset_size=len(state.trainset), valset_size=len(state.valset),
        min_gain=state.min_gain if state.valset else 0.0, budgets=state.limits.to_dict(),
        cost_estimate=forecast.to_dict(),
        trajectory=_trajectory(state, current, baseline),
    )
    logger.info("concept distillation done: valset score %s -> %s with %d rule(s); %d student and %d teacher "
                "calls (%d student cache hits)", fmt_score(baseline), fmt_score(final), len(current),
                state.ledger.calls(Role.STUDENT), state.ledger.calls(Role.TEACHER),
                state.ledger.cache_hits(Role.STUDENT))
    return optimized


RESULT_ATTRIBUTES = ("distillation", "candidate_programs")


def _without_results(student: dspy.Module) -> dspy.Module:
    """``student`` without what an earlier compile attached to it (re-optimizing), so the copies made from it do not
    carry those results along, each compile multiplying them; ``student`` itself is not changed."""
    if not any(name in vars(student) for name in RESULT_ATTRIBUTES):
        return student
    plain = copy.copy(student)
    for name in RESULT_ATTRIBUTES:
        vars(plain).pop(name, None)
    return plain


def evidence_failure(state: CompileState) -> DistillationError | None:
    """Why the run produced no evidence about any rule, or None when it did (or had nothing to learn): a failure a
    phase raised (metric or program failing everywhere, a run budget too small, the teacher unreachable), the
    student LM failing before any run finished, or a budget used up before any candidate was raced."""
    if state.failure is not None:
        return state.failure
    cause = state.stop_cause
    if isinstance(cause, StudentLMError) and not len(state.evaluator.cache):
        failure = LMUnavailableError("student", cause.__cause__ or cause)
        failure.__cause__ = cause.__cause__ or cause
        return failure
    if isinstance(cause, BudgetExhaustedError) and not isinstance(cause, RunClosedError) and not state.decisions:
        return BudgetTooSmallError(
            f"the {cause} before any candidate rule was raced on the valset, so nothing was verified "
            f"({state.ledger.calls(Role.STUDENT)} student and {state.ledger.calls(Role.TEACHER)} teacher calls spent, "
            f"{len(state.mistakes)} mistakes collected): give a larger budget or a higher auto preset")
    return None


def stop_summary(result: DistillationResult, cause: BaseException | None) -> str:
    """The one line that says a run ended early: why, what it kept, and what was left unverified."""
    left = [r for r in result.rules if r.status == RuleStatus.CANDIDATE or (r.reason or "").startswith("not verified: "
                                                                                           + str(result.stopped))]
    scores = ""
    if result.baseline_score is not None and result.final_score is not None:
        scores = f" (valset score {result.baseline_score:.3f} -> {result.final_score:.3f})"
    hint = ""
    if isinstance(cause, BudgetExhaustedError):
        hint = "; a larger budget would verify them (with checkpoint_dir, a new compile resumes from here)"
    elif isinstance(cause, (StopRequestedError, StudentLMError)):
        hint = "; compile again with the same checkpoint_dir to resume"
    return (f"concept distillation stopped early ({clip_text(result.stopped, 300)}): kept {len(result.ruleset)} "
            f"verified rule(s){scores} from {len(result.mistakes)} mistakes; {len(left)} candidate rule(s) not "
            f"verified{hint if left else ''}")


def _prefixes(current: RuleSet) -> list[RuleSet]:
    return [RuleSet(list(current)[:k]) for k in range(len(current) + 1)]


def _candidates(state: CompileState, student: dspy.Module, current: RuleSet,
                optimized: dspy.Module) -> list[dict[str, Any]]:
    """Every rule set on the accepted path that was scored on the whole valset, best first."""
    out = []
    for ruleset in _prefixes(current):
        scores = state.evaluator.scores(ruleset, state.raced)
        measured = [s for s in scores if s is not None]
        if len(measured) == len(scores):
            program = optimized if ruleset == current else ruleset.apply(student, state.base_instructions)
            out.append({"score": mean_score(measured), "program": program, "rules": ruleset})
    out.sort(key=lambda c: (-c["score"], len(c["rules"])))
    return out


def _trajectory(state: CompileState, current: RuleSet, baseline: float | None) -> list[TrajectoryStep]:
    """The valset score after each accepted rule, with the rule's gain and its confidence interval."""
    if baseline is None:
        return []
    steps = [TrajectoryStep(0, baseline)]
    for k, ruleset in enumerate(_prefixes(current)[1:], 1):
        scores = state.evaluator.scores(ruleset, state.raced)
        if any(s is None for s in scores):
            break
        rule = list(current)[k - 1]
        ci = None if rule.gain_ci is None else (rule.gain_ci[0], rule.gain_ci[1])
        score = sum(s for s in scores if s is not None) / len(scores)
        steps.append(TrajectoryStep(k, score, rule.id, rule.text, rule.gain, ci))
    return steps

