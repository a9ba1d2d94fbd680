"""Phase 1: run the student on the trainset and record its mistakes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from .evaluation import Evaluator, Outcome, example_key
from .rules import RuleSet

logger = logging.getLogger(__name__)

FIELD_LIMIT = 1200  # characters of one field value shown to the teacher


@dataclass
class Mistake:
    """One training example the student got wrong, with everything the teacher needs to explain it.

    ``steps`` holds every predictor call from the trace, in order: ``{"predictor", "inputs", "outputs"}``."""

    id: str
    example_key: str
    inputs: dict[str, Any]
    gold: dict[str, Any]
    score: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    feedback: str | None = None
    error: str | None = None
    error_kind: str | None = None
    raw_text: str | None = None
    failed_predictor: str | None = None
    round: int = 0

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
        if self.error_kind == "parse":
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
) -> tuple[list[Mistake], list[Outcome], float]:
    """Run the current variant on the trainset; return (mistakes, outcomes, threshold used).

    With no explicit ``threshold`` a mistake is a score below the metric's maximum, taken as 1.0 or the largest
    score seen if that is larger.
    """
    outcomes = evaluator.run([(ruleset, ex) for ex in trainset], phase="mistakes",
                             desc=f"Round {round_index + 1}: student on trainset")
    if threshold is None:
        threshold = max([1.0, *(o.score for o in outcomes)])
    mistakes = []
    for ex, outcome in zip(trainset, outcomes, strict=True):
        if not is_mistake(outcome, threshold):
            continue
        key = example_key(ex)
        mistakes.append(
            Mistake(
                id=f"{round_index}-{key[:8]}",
                example_key=key,
                inputs=dict(ex.inputs().items()),
                gold=dict(ex.labels().items()),
                score=outcome.score,
                steps=outcome.steps,
                feedback=outcome.feedback,
                error=outcome.error,
                error_kind=outcome.error_kind,
                raw_text=outcome.raw_text,
                failed_predictor=outcome.failed_predictor,
                round=round_index,
            )
        )
    metric_errors = sum(o.error_kind == "metric" for o in outcomes)
    if outcomes and metric_errors == len(outcomes):
        raise ValueError(f"the metric raised on every training example, e.g. {outcomes[0].error}; fix the metric first")
    return mistakes, outcomes, threshold
