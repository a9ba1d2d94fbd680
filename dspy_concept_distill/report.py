"""What a compile learned: scores, every candidate rule and its fate, usage; as DataFrames, text and HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from .budget import STUDENT, TEACHER, Ledger
from .induction import BatchReply
from .mistakes import Mistake
from .rules import ACCEPTED, REJECTED, Rule, RuleSet

RULE_COLUMNS = ["round", "predictor", "rule", "status", "gain", "evaluated_on", "reason", "source_mistakes",
                "duplicates_merged", "id"]


@dataclass
class RoundSummary:
    round: int
    train_score: float
    mistakes: int
    candidates: int
    accepted: int
    val_score_before: float | None
    val_score_after: float | None


@dataclass
class DistillationResult:
    """Attached to the optimized program as ``program.distillation``.

    Scores are mean metric values on the valset (0-1 for a 0/1 metric); ``None`` when they could not be measured.
    """

    baseline_score: float | None
    final_score: float | None
    ruleset: RuleSet
    rules: list[Rule]
    mistakes: list[Mistake]
    replies: list[BatchReply]
    usage: Ledger
    rounds: list[RoundSummary] = field(default_factory=list)
    stopped: str | None = None
    trainset_size: int = 0
    valset_size: int = 0
    min_gain: float = 0.0
    budgets: dict[str, float | int | None] = field(default_factory=dict)  # limits: student_calls, teacher_calls, ...
    cost_estimate: dict[str, float | None] = field(default_factory=dict)  # projected USD before the run: low, high
    trajectory: list[dict[str, Any]] = field(default_factory=list)  # valset score as accepted rules were added

    @property
    def accepted_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.status == ACCEPTED]

    @property
    def rejected_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.status == REJECTED]

    @property
    def student_calls(self) -> int:
        return self.usage.calls(STUDENT)

    @property
    def teacher_calls(self) -> int:
        return self.usage.calls(TEACHER)

    def report(self):
        """One row per candidate rule: round, predictor, text, status, measured gain, and why."""
        import pandas as pd

        rows = [
            {
                "round": r.round, "predictor": r.predictor, "rule": r.text, "status": r.status, "gain": r.gain,
                "evaluated_on": r.evaluated_on, "reason": r.reason, "source_mistakes": len(r.source_mistakes),
                "duplicates_merged": len(r.duplicates), "id": r.id,
            }
            for r in self.rules
        ]
        frame = pd.DataFrame(rows, columns=RULE_COLUMNS)
        order = {ACCEPTED: 0, REJECTED: 1}
        return frame.sort_values(["status", "round"], key=lambda col: col.map(order) if col.name == "status" else col,
                                 kind="stable").reset_index(drop=True)

    def usage_report(self):
        """Calls and tokens per role, phase and model (cost in USD where the model has a known price)."""
        return self.usage.frame()

    def summary(self) -> str:
        """A plain-text report for terminals and logs."""
        lines = [
            f"valset score: {_fmt(self.baseline_score)} -> {_fmt(self.final_score)} "
            f"({self.valset_size} validation / {self.trainset_size} training examples, min_gain {self.min_gain:g})",
        ]
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        lines.append(f"accepted rules ({len(self.accepted_rules)}):")
        lines += [f"  + [{r.predictor}] {r.text}  (gain {_gain(r.gain)})" for r in self.accepted_rules] or ["  (none)"]
        lines.append(f"rejected rules ({len(self.rejected_rules)}):")
        lines += [f"  - [{r.predictor}] {r.text}  ({r.reason})" for r in self.rejected_rules] or ["  (none)"]
        lines.append("usage:")
        for row in self.usage.rows():
            cost = "" if row.cost is None else f", ${row.cost:.4f}"
            lines.append(f"  {row.role:7s} {row.phase:12s} {row.model}: {row.calls} calls, "
                         f"{row.input_tokens} in / {row.output_tokens} out tokens{cost}")
        totals = self.usage.totals()
        lines.append("  total: " + ", ".join(f"{role} {t['calls']} calls" for role, t in totals.items()))
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML page with the summary, the rule table and the usage table."""
        head = html.escape(f"valset score {_fmt(self.baseline_score)} -> {_fmt(self.final_score)}")
        return (
            "<html><head><meta charset='utf-8'><title>Concept Distillation report</title></head><body>"
            f"<h1>Concept Distillation report</h1><p>{head}</p>"
            f"<h2>Rules</h2>{self.report().to_html(index=False, na_rep='')}"
            f"<h2>Usage</h2>{self.usage_report().to_html(index=False, na_rep='')}"
            "</body></html>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_score": self.baseline_score, "final_score": self.final_score, "stopped": self.stopped,
            "min_gain": self.min_gain, "trainset_size": self.trainset_size, "valset_size": self.valset_size,
            "rules": [r.to_dict() for r in self.rules], "usage": self.usage.to_dict(),
            "rounds": [vars(r) for r in self.rounds],
        }


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.3f}"


def _gain(gain: float | None) -> str:
    return "n/a" if gain is None else f"{gain:+.3f}"
