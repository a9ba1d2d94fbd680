"""The records that pass between the phases of a compile: what one program run produced (``Outcome``), a
training mistake (``Mistake``), one teacher reply (``BatchReply``), one round's summary (``RoundSummary``), a run's
hard limits (``Limits``), the bounds of its LM calls (``CallBounds``) and its cost forecast (``CostForecast``). Plain
data: every phase imports them, and they import nothing of the package."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    PARSE = "parse"  # the LM reply did not parse into the output fields
    EXCEPTION = "exception"  # the program raised
    METRIC = "metric"  # the metric raised or returned something that is not a finite number



@dataclass
class Outcome:
    """What one run of a program variant on one example produced."""

    score: float
    feedback: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # [{"predictor", "inputs", "outputs"}] in call order
    error: str | None = None
    error_kind: ErrorKind | None = None
    raw_text: str | None = None  # the LM reply that failed to parse
    failed_predictor: str | None = None
    calls: int = 0  # LM calls the run made (a call for n completions counts n; DSPy cache hits count, retries not)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, containers copied (as ``dataclasses.asdict`` gives, without its generic walk)."""
        return {name: _copied(getattr(self, name)) for name in _OUTCOME_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        outcome = cls(**data)
        if outcome.error_kind is not None:
            outcome.error_kind = ErrorKind(outcome.error_kind)
        if not isinstance(outcome.score, (int, float)) or not math.isfinite(outcome.score):
            raise ValueError(f"an outcome needs a finite score, got {outcome.score!r}")
        return outcome


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))
_SCALARS = (str, int, float, bool, type(None), ErrorKind)


def _copied(value: Any) -> Any:
    """A copy of plain data (dicts, lists and scalars, as outcomes hold) that shares no container with ``value``."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_copied(v) for v in value)
    return copy.deepcopy(value)


def mean_score(scores: Sequence[float] | None) -> float | None:
    """The mean of ``scores``; None when there are none (a score that could not be measured)."""
    return None if not scores else sum(scores) / len(scores)


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


@dataclass
class BatchReply:
    """What one teacher call returned (kept for the report and checkpoints)."""

    round: int
    batch: int
    mistake_ids: list[str]
    diagnoses: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    transient: bool = False  # the teacher LM itself failed (network, quota): ask again on resume


@dataclass
class RoundSummary:
    round: int
    train_score: float
    mistakes: int
    candidates: int
    accepted: int
    val_score_before: float | None
    val_score_after: float | None


@dataclass(frozen=True)
class CallBounds:
    student_low: int  # LM calls of the runs every compile makes: trainset and valset once
    student_high: int  # the student budget in LM calls
    teacher: int  # the teacher budget


@dataclass(frozen=True)
class CostForecast:
    """What the run was projected to cost before it paid: LM calls and USD (None where a model has no price)."""

    bounds: CallBounds
    low_usd: float | None = None
    high_usd: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"low": self.low_usd, "high": self.high_usd}


@dataclass(frozen=True)
class Limits:
    """A run's hard limits. ``student_calls`` counts LM calls (requests): given as ``max_student_calls``, or
    converted from ``program_runs`` (a preset's runs, or ``max_metric_calls``) with ``calls_per_run``, the mean LM
    calls of one program run measured on the first trainset pass (``converted``); None before that (the first pass
    is bounded by its own runs). A change makes a new record: nothing mutates one."""

    student_calls: int | None
    teacher_calls: int | None
    tokens: int | None = None
    cost_usd: float | None = None
    program_runs: float | None = None  # None: the student budget was given in LM calls
    calls_per_run: float | None = None  # measured; None until the first pass

    def converted(self, calls_per_run: float) -> Limits:
        """The limits once the LM calls of a program run are measured: a budget in program runs becomes
        ``ceil(program_runs * calls_per_run)`` LM calls; one given in LM calls stays as it is."""
        if self.program_runs is None:
            return dataclasses.replace(self, calls_per_run=calls_per_run)
        return dataclasses.replace(self, student_calls=math.ceil(self.program_runs * calls_per_run - 1e-9),
                                   calls_per_run=calls_per_run)

    def with_more_runs(self, runs: float) -> Limits:
        """A budget in program runs grown by ``runs`` (converted at the measured calls per run)."""
        if self.program_runs is None:
            raise ValueError("the student budget was given in LM calls (max_student_calls), not in program runs")
        grown = dataclasses.replace(self, program_runs=self.program_runs + runs)
        return grown if self.calls_per_run is None else grown.converted(self.calls_per_run)

    def to_dict(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
