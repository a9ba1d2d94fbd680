"""Helpers shared by test modules in several folders (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import dspy

REPO = Path(__file__).resolve().parents[1]  # the repository's root: pyproject.toml, README.md, docs/, benchmarks/


class PlanAndSolve(dspy.Module):
    """A two-predictor program (``plan``, ``solve``) whose answer field is untyped."""

    def __init__(self):
        super().__init__()
        self.plan = dspy.Predict("question -> plan")
        self.solve = dspy.ChainOfThought("question, plan -> answer")

    def forward(self, question):
        return self.solve(question=question, plan=self.plan(question=question).plan)
