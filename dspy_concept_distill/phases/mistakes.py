"""Phase 1: run the student on the trainset and record its mistakes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import dspy

from ..errors import MetricFailedError, ProgramFailedError
from ..records import ErrorKind, Mistake, MistakesFound, Outcome
from ..rules import RuleSet
from ..runtime.evaluator import Evaluator, example_key
from ..runtime.metric import metric_max

logger = logging.getLogger(__name__)


def is_mistake(outcome: Outcome, threshold: float) -> bool:
    return outcome.error_kind is not None or outcome.score < threshold


def collect_mistakes(
    evaluator: Evaluator,
    ruleset: RuleSet,
    trainset: Sequence[dspy.Example],
    *,
    threshold: float | None,
    round_index: int,
    on_usable: Callable[[], None] | None = None,
) -> MistakesFound:
    """Run the current variant on the trainset; return its mistakes, every outcome and the threshold used.

    With no explicit ``threshold`` a mistake is a score below the metric's maximum, taken as 1.0 or the largest
    score seen if that is larger. ``on_usable`` is called as soon as the run cannot fail fast any more.
    """
    outcomes = evaluator.run([(ruleset, ex) for ex in trainset], phase="mistakes",
                             desc=f"Round {round_index + 1}: student on trainset", on_usable=on_usable)
    if threshold is None:
        threshold = metric_max(outcomes)
    mistakes = [
        Mistake(id=f"{round_index}-{key[:8]}", example_key=key, inputs=dict(ex.inputs().items()),
                gold=dict(ex.labels().items()), outcome=outcome, round=round_index)
        for ex, outcome in zip(trainset, outcomes, strict=True)
        if is_mistake(outcome, threshold) and (key := example_key(ex))
    ]
    fail_if_all_failed(outcomes, "training example")  # nothing to learn: stop before any teacher spend
    return MistakesFound(mistakes, outcomes, threshold)


def fail_if_all_failed(outcomes: Sequence[Outcome], what: str) -> None:
    """``MetricFailedError`` (or ``ProgramFailedError``) when the metric (or the program) failed on every one of
    ``outcomes``: nothing can be measured, and the fault is not the rules'."""
    if not outcomes:
        return
    for kind, error, failed, fix in (
            (ErrorKind.METRIC, MetricFailedError, "the metric failed", "fix the metric first"),
            (ErrorKind.EXCEPTION, ProgramFailedError, "the program raised", "fix the program first")):
        if all(o.error_kind == kind for o in outcomes):
            every = f"every {what}" if what == "training example" else f"every one of the {len(outcomes)} {what}s"
            raise error(f"{failed} on {every}, e.g. {outcomes[0].error}; {fix}")
