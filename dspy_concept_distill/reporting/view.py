"""What the renderers read of a finished compile: a ``Protocol`` that ``DistillationResult`` satisfies, so the text
and HTML reports and the MLflow logger take plain fields and never import the result class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..records import BatchReply, Mistake, RoundSummary, TrajectoryStep
from ..rules import Rule, RuleSet
from ..runtime.ledger import Ledger


class ResultView(Protocol):
    """The fields of a ``DistillationResult`` a report is made of."""

    baseline_score: float | None
    final_score: float | None
    ruleset: RuleSet
    rules: list[Rule]
    mistakes: list[Mistake]
    replies: list[BatchReply]
    usage: Ledger
    rounds: list[RoundSummary]
    stopped: str | None
    trainset_size: int
    valset_size: int
    min_gain: float
    budgets: dict[str, float | int | None]
    cost_estimate: dict[str, float | None]
    trajectory: list[TrajectoryStep]

    @property
    def accepted_rules(self) -> Sequence[Rule]: ...

    @property
    def rejected_rules(self) -> Sequence[Rule]: ...

    def why_nothing_learned(self) -> str | None: ...

    def to_html(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...
