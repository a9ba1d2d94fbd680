"""What a compile learned: scores, every candidate rule and its fate, usage; as DataFrames, text and HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import BatchReply, Mistake, RoundSummary, TrajectoryStep
from ..rules import Rule, RuleSet, RuleStatus
from ..runtime.ledger import Ledger
from ..runtime.metering import Role
from ..text import clip_text
from .html import render, render_fragment
from .text import display_round, headline, ordered_rules, summary_lines, why_nothing_learned

RULE_COLUMNS = ["round", "predictor", "rule", "status", "gain", "evaluated_on", "reason", "source_mistakes",
                "duplicates_merged", "id", "kept", "gain_ci_low", "gain_ci_high", "ignored_by_student", "ablation_gain",
               "inherited"]
SAVED_FILES = ("report.html", "rules.json", "rules.md", "result.json")


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
    # limits (``records.Limits.to_dict``): student_calls, teacher_calls, tokens, cost_usd, program_runs, calls_per_run
    budgets: dict[str, float | int | None] = field(default_factory=dict)
    cost_estimate: dict[str, float | None] = field(default_factory=dict)  # projected USD before the run: low, high
    trajectory: list[TrajectoryStep] = field(default_factory=list)  # valset score as accepted rules were added

    @property
    def accepted_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.status == RuleStatus.ACCEPTED]

    @property
    def rejected_rules(self) -> list[Rule]:
        """Rejected candidates; a kept rule proposed again in a later round (rejected as already in force) is not
        one of them."""
        kept = {r.id for r in self.ruleset}
        return [r for r in self.rules if r.status == RuleStatus.REJECTED and r.id not in kept]

    @property
    def inherited_rules(self) -> list[Rule]:
        """The rules the program carried when the compile began (re-optimizing), each re-checked on this valset:
        kept ones are in ``ruleset``, ``Rule.inherited`` says where each came from."""
        return [r for r in self.rules if r.inherited is not None]

    @property
    def student_calls(self) -> int:
        return self.usage.calls(Role.STUDENT)

    @property
    def teacher_calls(self) -> int:
        return self.usage.calls(Role.TEACHER)

    def report(self):
        """One row per candidate rule, kept rules first: round (from 1), predictor, text, status, measured gain
        with its 95% CI, adherence and ablation, and why it was kept or dropped."""
        import pandas as pd

        kept = {r.id for r in self.ruleset}
        rows = [
            {
                "round": display_round(r.round), "predictor": r.predictor, "rule": r.text, "status": r.status,
                "gain": r.gain, "evaluated_on": r.evaluated_on, "reason": r.reason,
                "source_mistakes": len(r.source_mistakes), "duplicates_merged": len(r.duplicates), "id": r.id,
                "kept": r.id in kept, "gain_ci_low": r.gain_ci[0] if r.gain_ci else None,
                "gain_ci_high": r.gain_ci[1] if r.gain_ci else None,
                "ignored_by_student": None if r.adherence is None else r.adherence.ignored,
                "ablation_gain": r.ablation_gain, "inherited": r.inherited is not None,
            }
            for r in ordered_rules(self)
        ]
        return pd.DataFrame(rows, columns=RULE_COLUMNS)

    def usage_report(self):
        """Calls and tokens per role, phase and model (cost in USD where the model has a known price)."""
        return self.usage.frame()

    def why_nothing_learned(self) -> str | None:
        """Why the returned program carries no rule (no mistakes, no usable teacher reply, every candidate
        rejected and the most common reason), or None when it carries some."""
        return why_nothing_learned(self)

    def __repr__(self) -> str:
        stopped = f"; stopped: {clip_text(self.stopped, 80)}" if self.stopped else ""
        return (f"DistillationResult({headline(self)}; {self.student_calls} student and {self.teacher_calls} teacher "
                f"calls{stopped})")

    def _repr_html_(self) -> str:
        """The report, shown by Jupyter and other notebooks when the result is a cell's value."""
        return render_fragment(self)

    def summary(self) -> str:
        """A plain-text report for terminals and logs: scores, kept and rejected rules, spend against budget."""
        return "\n".join(summary_lines(self))

    def to_html(self) -> str:
        """One self-contained HTML page: headline, score plot, rule table, provenance, teacher batches, cost."""
        return render(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data. ``rules[*].round`` and ``mistakes[*].round`` are stored from 0 (as in ``Rule``);
        ``rounds[*].round`` counts from 1, as every printed report does."""
        return {
            "baseline_score": self.baseline_score, "final_score": self.final_score, "stopped": self.stopped,
            "min_gain": self.min_gain, "trainset_size": self.trainset_size, "valset_size": self.valset_size,
            "kept_rule_ids": [r.id for r in self.ruleset], "nothing_learned": self.why_nothing_learned(),
            "rules": [r.to_dict() for r in self.rules], "usage": self.usage.to_dict(),
            "rounds": [vars(r).copy() for r in self.rounds], "budgets": dict(self.budgets),
            "cost_estimate": dict(self.cost_estimate), "trajectory": [s.to_dict() for s in self.trajectory],
            "mistakes": [{**vars(m), "outcome": m.outcome.to_dict()} for m in self.mistakes],
            "replies": [r.to_dict() for r in self.replies],
        }

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``report.html``, ``rules.json`` and ``rules.md`` (the kept rules, loadable with
        ``RuleSet.from_json``/``from_markdown``) and ``result.json`` (``to_dict``) into ``directory``, created if
        needed. Returns the paths by name."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {name: out / name for name in SAVED_FILES}
        paths["report.html"].write_text(self.to_html(), encoding="utf-8")
        self.ruleset.to_json(paths["rules.json"])
        self.ruleset.to_markdown(paths["rules.md"])
        text = json.dumps(self.to_dict(), indent=2, default=str, ensure_ascii=False)
        paths["result.json"].write_text(text + "\n", encoding="utf-8")
        return paths
