"""Calling a DSPy metric the way DSPy does, and reading what it returns."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import dspy

if TYPE_CHECKING:
    from ..records import Outcome


class MetricAdapter:
    """Calls a DSPy metric the way DSPy does, whatever its arity, and reads score and feedback.

    Metrics with 2 arguments get ``(example, prediction)``; with 3, ``(example, prediction, trace)``; with 5
    (GEPA style), ``(gold, prediction, trace, pred_name, pred_trace)``. Scoring passes ``trace=None`` as
    ``dspy.Evaluate`` does. A metric may return a number, a bool, or ``dspy.Prediction(score=..., feedback=...)``;
    NaN and infinite scores are refused (``ValueError``), so they are never compared.
    """

    def __init__(self, metric: Callable[..., Any]) -> None:
        if not callable(metric):
            raise TypeError(f"metric must be callable, got {type(metric).__name__}")
        self.metric = metric
        self.arity = self._arity(metric)

    @staticmethod
    def _arity(metric: Callable[..., Any]) -> int:
        try:
            sig = inspect.signature(metric)
        except (TypeError, ValueError):
            return 3
        for arity in (5, 3, 2):
            try:
                sig.bind(*range(arity))
            except TypeError:
                continue
            if arity == 5:
                named = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
                if len(named) < 5:  # *args metrics take the 3-argument form, as DSPy's optimizers call them
                    continue
            return arity
        raise TypeError(
            f"metric {getattr(metric, '__name__', metric)!r} must accept (example, prediction), "
            "(example, prediction, trace) or (gold, pred, trace, pred_name, pred_trace)"
        )

    def __call__(self, example: dspy.Example, prediction: Any) -> tuple[float, str | None]:
        args = (example, prediction, None, None, None)[: self.arity]
        return self.read(self.metric(*args))

    @staticmethod
    def read(value: Any) -> tuple[float, str | None]:
        feedback = None
        if isinstance(value, (dspy.Prediction, dict)):
            getter = value.get if isinstance(value, dict) else (lambda k, d=None: getattr(value, k, d))
            feedback = getter("feedback", None)
            value = getter("score", None)
            if value is None:
                raise ValueError("a metric that returns a Prediction or dict must set 'score'")
        if isinstance(value, bool):
            return (1.0 if value else 0.0), feedback
        try:
            score = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric returned {value!r}, which is not a number") from exc
        if not math.isfinite(score):
            raise ValueError(f"metric returned {score}, which is not a finite number")
        return score, (str(feedback) if feedback is not None else None)


def metric_max(outcomes: Iterable[Outcome]) -> float:
    """The metric's maximum per example: 1.0, or the largest score seen if a metric goes higher."""
    return max([1.0, *(o.score for o in outcomes)])
