"""Concept Distillation for DSPy: a strong teacher LM turns a cheap student LM's mistakes into short rules,
and each rule joins the student's instructions only if it raises the student's validation score."""

from .errors import (
    BudgetTooSmallError,
    DistillationError,
    LMUnavailableError,
    MetricFailedError,
    ProgramFailedError,
)
from .optimizer import ConceptDistillation
from .reporting.result import DistillationResult
from .rules import Rule, RuleSet
from .runtime.logs import configure_logging

configure_logging()  # as `import dspy` sets up dspy's loggers: progress and decisions on stderr, in DSPy's format

__all__ = ["BudgetTooSmallError", "ConceptDistillation", "DistillationError", "DistillationResult",
           "LMUnavailableError", "MetricFailedError", "ProgramFailedError", "Rule", "RuleSet"]
__version__ = "0.1.0"
