"""The records that pass between the phases of a compile: one step of a program run (``Step``), what one run
produced (``Outcome``), a training mistake (``Mistake``), the mistakes phase's result (``MistakesFound``), a rule as
the teacher proposed it (``Proposal``) and one teacher reply (``BatchReply``), one round's summary (``RoundSummary``),
a point of the score trajectory (``TrajectoryStep``), a run's hard limits (``Limits``), the bounds of its LM calls
(``CallBounds``) and its cost forecast (``CostForecast``). Plain data: every phase imports them, and they import nothing
of the package."""

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



@dataclass(frozen=True)
class Step:
    """One predictor call of a program run: the predictor's name and the inputs and outputs it saw (JSON-friendly)."""

    predictor: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"predictor", "inputs", "outputs"}``, the containers copied."""
        return {"predictor": self.predictor, "inputs": _copied(self.inputs), "outputs": _copied(self.outputs)}

    @classmethod
    def from_dict(cls, data: Any) -> Step:
        if not (isinstance(data, dict) and isinstance(data.get("predictor"), str)
                and isinstance(data.get("inputs"), dict) and isinstance(data.get("outputs"), dict)):
            raise ValueError("steps must be a list of {predictor, inputs, outputs} objects")
        return cls(data["predictor"], data["inputs"], data["outputs"])


@dataclass
class Outcome:
    """What one run of a program variant on one example produced."""

    score: float
    feedback: str | None = None
    steps: list[Step] = field(default_factory=list)  # the predictor calls, in call order
    error: str | None = None
    error_kind: ErrorKind | None = None
    raw_text: str | None = None  # the LM reply that failed to parse
    failed_predictor: str | None = None
    calls: int = 0  # LM calls the run made (a call for n completions counts n; DSPy cache hits count, retries not)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, containers copied (as ``dataclasses.asdict`` gives, without its generic walk)."""
        return {name: [step.to_dict() for step in self.steps] if name == "steps" else _copied(getattr(self, name))
                for name in _OUTCOME_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError("steps must be a list of {predictor, inputs, outputs} objects")
        outcome = cls(**{**data, "steps": [Step.from_dict(step) for step in steps]})
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
    def steps(self) -> list[Step]:
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


@dataclass(frozen=True)
class MistakesFound:
    """The result of phase 1: the student's mistakes on the trainset, the outcome of every run (trainset order) and
    the score below which a run counted as a mistake."""

    mistakes: list[Mistake]
    outcomes: list[Outcome]
    threshold: float

    @property
    def train_score(self) -> float:
        """The student's mean score on the trainset examples it ran on."""
        return sum(o.score for o in self.outcomes) / len(self.outcomes)


@dataclass(frozen=True)
class Proposal:
    """One rule as the teacher proposed it: the predictor it names (as the teacher wrote the name), the rule's text,
    and the numbers (from 1) of the batch's mistakes it says the rule prevents."""

    predictor: str
    text: str
    mistakes: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The teacher's reply shape: ``{"predictor", "rule", "mistakes"}``."""
        return {"predictor": self.predictor, "rule": self.text, "mistakes": list(self.mistakes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Proposal:
        """From the teacher's reply shape: a missing predictor is "", mistake numbers that are not integers are
        dropped."""
        return cls(predictor=str(data.get("predictor") or ""), text=str(data.get("rule", "")),
                   mistakes=tuple(n for n in data.get("mistakes", []) or [] if isinstance(n, int)))


@dataclass
class BatchReply:
    """What one teacher call returned (kept for the report and checkpoints)."""

    round: int
    batch: int
    mistake_ids: list[str]
    diagnoses: list[str] = field(default_factory=list)
    rules: list[Proposal] = field(default_factory=list)  # best first, as the teacher ranked them
    error: str | None = None
    attempts: int = 0
    transient: bool = False  # the teacher LM itself failed (network, quota): ask again on resume

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, each proposal in the teacher's reply shape."""
        return {"round": self.round, "batch": self.batch, "mistake_ids": list(self.mistake_ids),
                "diagnoses": list(self.diagnoses), "rules": [p.to_dict() for p in self.rules], "error": self.error,
                "attempts": self.attempts, "transient": self.transient}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchReply:
        return cls(**{**data, "rules": [Proposal.from_dict(p) for p in data.get("rules", [])]})


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
class TrajectoryStep:
    """The valset score with the first ``rules`` kept rules (0: the starting instructions); for a step past the
    first, the rule added there, its gain when it was accepted and that gain's 95% interval."""

    rules: int
    score: float
    rule_id: str | None = None
    text: str | None = None
    gain: float | None = None
    ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rules": self.rules, "rule_id": self.rule_id, "text": self.text, "score": self.score,
                "gain": self.gain, "ci": None if self.ci is None else list(self.ci)}


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
