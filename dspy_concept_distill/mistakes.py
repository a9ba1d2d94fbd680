"""Phase 1: run the student on the trainset and record its mistakes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from .evaluation import ErrorKind, Evaluator, Outcome, example_key
from .metric import metric_max
from .rules import RuleSet

logger = logging.getLogger(__name__)

FIELD_LIMIT = 1200  # characters of one field value shown to the teacher


@dataclass
class Mistake:
    """One training example the student got wrong, with everything the teacher needs to explain it: the example's
    inputs and gold labels, and the ``Outcome`` of the run (score, every predictor's outputs, error, raw text)."""

    id: str
    example_key: str
    inputs: dict[str, Any]
    gold: dict[str, Any]
    outcome: Outcome
    round: int = 0

    @property
    def score(self) -> float:
        return self.outcome.score

    @property
    def steps(self) -> list[dict[str, Any]]:
        return self.outcome.steps

    @property
    def feedback(self) -> str | None:
        return self.outcome.feedback

    @property
    def error(self) -> str | None:
        return self.outcome.error

    @property
    def error_kind(self) -> str | None:
        return self.outcome.error_kind

    @property
    def raw_text(self) -> str | None:
        return self.outcome.raw_text

    @property
    def failed_predictor(self) -> str | None:
        return self.outcome.failed_predictor

    def render(self, number: int) -> str:
        """The mistake as the teacher reads it."""
        lines = [f"### Mistake {number}", "Inputs:"]
        lines += [f"  {k}: {_clip(v)}" for k, v in self.inputs.items()]
        lines.append("Expected (gold labels):")
        lines += [f"  {k}: {_clip(v)}" for k, v in self.gold.items()] or ["  (none given)"]
        lines.append("What the student did:")
        for step in self.steps:
            lines.append(f"  [{step['predictor']}]")
            lines += [f"    input {k}: {_clip(v)}" for k, v in step["inputs"].items() if self.inputs.get(k) != v]
            lines += [f"    {k}: {_clip(v)}" for k, v in step["outputs"].items()]
        if self.error_kind == ErrorKind.PARSE:
            where = f" of predictor `{self.failed_predictor}`" if self.failed_predictor else ""
            lines.append(f"  The reply{where} could not be parsed into the output fields. "
                         f"Raw reply: {_clip(self.raw_text)}")
        elif self.error:
            lines.append(f"  The program raised: {_clip(self.error)}")
        lines.append(f"Score: {self.score:g}")
        if self.feedback:
            lines.append(f"Metric feedback: {_clip(self.feedback)}")
        return "\n".join(lines)


def _clip(value: Any, limit: int = FIELD_LIMIT) -> str:
    """A field value for the teacher: clipped to ``limit`` characters, multi-line text indented as a block."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text.strip()
    if len(text) > limit:
        text = text[:limit] + " [...]"
    return text.replace("\n", "\n    ") if "\n" in text else text


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
) -> tuple[list[Mistake], list[Outcome], float]:
    """Run the current variant on the trainset; return (mistakes, outcomes, threshold used).

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
    _fail_fast(outcomes)
    return mistakes, outcomes, threshold


def _fail_fast(outcomes: Sequence[Outcome]) -> None:
    """Stop before any teacher spend when nothing can be learned: the metric or the program fails every time."""
    if not outcomes:
        return
    for kind, what, fix in ((ErrorKind.METRIC, "the metric failed", "fix the metric first"),
                            (ErrorKind.EXCEPTION, "the program raised", "fix the program first")):
        if all(o.error_kind == kind for o in outcomes):
            raise ValueError(f"{what} on every training example, e.g. {outcomes[0].error}; {fix}")
