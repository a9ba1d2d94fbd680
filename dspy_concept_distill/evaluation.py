"""Scoring program variants on examples, in parallel through ``dspy.Evaluate``, with one cache.

A *variant* is the caller's program with a RuleSet rendered into its instructions. Every (variant, example)
pair is run at most once per compile: the cache maps ``(variant_key, example_key)`` to an ``Outcome``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError, LMError, LMInvalidRequestError, LMUnsupportedFeatureError
from tqdm.auto import tqdm

from .budget import STUDENT, Budget, BudgetExhaustedError
from .rules import RuleSet, render_instructions

logger = logging.getLogger(__name__)

PARSE_FAILURE = "parse"
EXCEPTION = "exception"
METRIC_ERROR = "metric"


class StudentLMError(RuntimeError):
    """The student LM itself failed (connection, auth, rate limit, server error) after DSPy's retries."""


@dataclass
class Outcome:
    """What one run of a program variant on one example produced."""

    score: float
    feedback: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # [{"predictor", "inputs", "outputs"}] in call order
    error: str | None = None
    error_kind: str | None = None  # PARSE_FAILURE | EXCEPTION | METRIC_ERROR
    raw_text: str | None = None  # the LM reply that failed to parse
    failed_predictor: str | None = None
    calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)


def example_key(example: dspy.Example) -> str:
    """A content hash of the example (inputs and labels), so the same example is never scored twice."""
    payload = json.dumps(example.toDict(), sort_keys=True, default=repr)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def variant_key(instructions: dict[str, str]) -> str:
    payload = json.dumps(sorted(instructions.items()))
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


class MetricAdapter:
    """Calls a DSPy metric the way DSPy does, whatever its arity, and reads score and feedback.

    Metrics with 2 arguments get ``(example, prediction)``; with 3, ``(example, prediction, trace)``; with 5
    (GEPA style), ``(gold, prediction, trace, pred_name, pred_trace)``. Scoring passes ``trace=None`` as
    ``dspy.Evaluate`` does. A metric may return a number, a bool, or ``dspy.Prediction(score=..., feedback=...)``.
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
            return float(value), (str(feedback) if feedback is not None else None)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric returned {value!r}, which is not a number") from exc


def is_lm_infrastructure_error(exc: BaseException) -> bool:
    """LM failures that say nothing about the prompt (network, auth, quota, server). A request the model rejects
    (e.g. context window exceeded) is an outcome of the prompt, so it counts as a mistake instead."""
    return isinstance(exc, LMError) and not isinstance(exc, (LMInvalidRequestError, LMUnsupportedFeatureError))


class _Skipped:
    """Marker for a job that was not run because the budget ran out."""


class Evaluator:
    """Runs variants of one program on examples, caching every outcome."""

    def __init__(
        self,
        program: dspy.Module,
        base_instructions: dict[str, str],
        metric: MetricAdapter,
        budget: Budget,
        num_threads: int | None,
        failure_score: float = 0.0,
    ) -> None:
        self.program = program
        self.base_instructions = dict(base_instructions)
        self.metric = metric
        self.budget = budget
        self.num_threads = num_threads
        self.failure_score = failure_score
        self.cache: dict[tuple[str, str], Outcome] = {}
        self._variants: dict[str, dspy.Module] = {}
        self._keys: dict[RuleSet, str] = {}
        self._lock = threading.Lock()
        n_predictors = max(1, len(base_instructions))
        # Upper bound of LM calls one program run makes: one per predictor, doubled for DSPy's JSON fallback
        # after a parse failure; raised if a run is ever seen to make more.
        self.calls_per_run = 2 * n_predictors

    # -- variants -------------------------------------------------------------------------------------------------
    def instructions_for(self, ruleset: RuleSet) -> dict[str, str]:
        return {name: render_instructions(base, ruleset.for_predictor(name))
                for name, base in self.base_instructions.items()}

    def key(self, ruleset: RuleSet) -> str:
        with self._lock:
            if ruleset not in self._keys:
                self._keys[ruleset] = variant_key(self.instructions_for(ruleset))
            return self._keys[ruleset]

    def variant(self, ruleset: RuleSet) -> dspy.Module:
        key = self.key(ruleset)
        with self._lock:
            if key not in self._variants:
                self._variants[key] = ruleset.apply(self.program, self.base_instructions)
            return self._variants[key]

    # -- cache ----------------------------------------------------------------------------------------------------
    def cached(self, ruleset: RuleSet, example: dspy.Example) -> Outcome | None:
        return self.cache.get((self.key(ruleset), example_key(example)))

    def scores(self, ruleset: RuleSet, examples: Sequence[dspy.Example]) -> list[float | None]:
        return [o.score if (o := self.cached(ruleset, ex)) is not None else None for ex in examples]

    # -- running --------------------------------------------------------------------------------------------------
    def run(
        self, jobs: Sequence[tuple[RuleSet, dspy.Example]], phase: str, desc: str | None = None
    ) -> list[Outcome]:
        """Outcomes for (ruleset, example) jobs, running only those not cached, in parallel; ``desc`` shows a
        progress bar with the running mean score.

        Raises ``BudgetExhaustedError`` or ``StudentLMError`` after the batch if some jobs could not run; every job
        that did finish is in the cache first, so no finished work is lost.
        """
        todo: dict[tuple[str, str], tuple[RuleSet, dspy.Example]] = {}
        for ruleset, example in jobs:
            key = (self.key(ruleset), example_key(example))
            if key not in self.cache and key not in todo:
                todo[key] = (ruleset, example)
        if todo:
            self._run_uncached(list(todo.items()), phase, desc)
        return [self.cache[(self.key(r), example_key(e))] for r, e in jobs]

    def _run_uncached(
        self, items: list[tuple[tuple[str, str], tuple[RuleSet, dspy.Example]]], phase: str, desc: str | None
    ) -> None:
        results: dict[int, Outcome | _Skipped | BaseException] = {}
        bar = tqdm(total=len(items), desc=desc) if desc else None
        scores: list[float] = []

        def dispatch(_job: int) -> dspy.Prediction:
            _, (ruleset, example) = items[_job]
            outcome = self._run_one(self.variant(ruleset), example, phase)
            results[_job] = outcome
            if bar is not None:
                with self._lock:
                    if isinstance(outcome, Outcome):
                        scores.append(outcome.score)
                    bar.update(1)
                    if scores:
                        bar.set_postfix(score=f"{sum(scores) / len(scores):.3f}")
            return dspy.Prediction(job=_job)

        def read_score(job_example: dspy.Example, prediction: dspy.Prediction) -> float:
            outcome = results.get(job_example._job)
            return outcome.score if isinstance(outcome, Outcome) else self.failure_score

        devset = [dspy.Example(_job=i).with_inputs("_job") for i in range(len(items))]
        evaluate = dspy.Evaluate(
            devset=devset,
            metric=read_score,
            num_threads=self.num_threads,
            display_progress=False,
            display_table=False,
            max_errors=len(devset) + 1,
            failure_score=self.failure_score,
        )
        try:
            evaluate(dispatch)
        finally:
            if bar is not None:
                bar.close()

        skipped = infra = 0
        first_infra: BaseException | None = None
        for i, (key, _) in enumerate(items):
            result = results.get(i)
            if isinstance(result, Outcome):
                self.cache[key] = result
            elif isinstance(result, BaseException):
                infra += 1
                first_infra = first_infra or result
            else:
                skipped += 1
        if infra:
            message = f"the student LM failed on {infra} of {len(items)} runs: {first_infra}"
            raise StudentLMError(message) from first_infra
        if skipped:
            raise BudgetExhaustedError(STUDENT, self.budget.limits[STUDENT] or 0)

    def _run_one(self, program: dspy.Module, example: dspy.Example, phase: str) -> Outcome | _Skipped | BaseException:
        reserve = self.calls_per_run
        try:
            self.budget.reserve(STUDENT, reserve)
        except BudgetExhaustedError:
            return _Skipped()
        names = {id(p): n for n, p in program.named_predictors()}
        trace: list[Any] = []
        tracker = None
        try:
            with self.budget.track(STUDENT, phase) as tracker, dspy.context(trace=trace):
                prediction = program(**example.inputs())
        except AdapterParseError as exc:
            return self._failure(trace, names, PARSE_FAILURE, exc, raw=exc.lm_response, tracker=tracker,
                                 failed=self._predictor_for_signature(program, exc.signature))
        except Exception as exc:
            if is_lm_infrastructure_error(exc):
                logger.warning("student LM failure on an example: %s", exc)
                return exc
            return self._failure(trace, names, EXCEPTION, exc, tracker=tracker)  # raised by program code
        finally:
            self.budget.settle(STUDENT, reserve)
            if tracker is not None and tracker.calls > self.calls_per_run:
                self.calls_per_run = tracker.calls
        steps = self._steps(trace, names)
        try:
            score, feedback = self.metric(example, prediction)
        except Exception as exc:
            logger.warning("the metric raised on an example (scored %s): %r", self.failure_score, exc)
            return Outcome(score=self.failure_score, steps=steps, error=f"metric raised {exc!r}",
                           error_kind=METRIC_ERROR, calls=tracker.calls)
        return Outcome(score=score, feedback=feedback, steps=steps, calls=tracker.calls)

    def _failure(self, trace, names, kind, exc, *, tracker, raw=None, failed=None) -> Outcome:
        steps = self._steps(trace, names)
        return Outcome(score=self.failure_score, steps=steps, error=_short_error(exc), error_kind=kind,
                       raw_text=raw, failed_predictor=failed, calls=tracker.calls if tracker is not None else 0)

    @staticmethod
    def _steps(trace: list[Any], names: dict[int, str]) -> list[dict[str, Any]]:
        steps = []
        for predictor, inputs, prediction in trace:
            outputs = dict(prediction.items()) if hasattr(prediction, "items") else {"output": prediction}
            steps.append({"predictor": names.get(id(predictor), type(predictor).__name__),
                          "inputs": _plain(inputs), "outputs": _plain(outputs)})
        return steps

    @staticmethod
    def _predictor_for_signature(program: dspy.Module, signature: Any) -> str | None:
        for name, predictor in program.named_predictors():
            if predictor.signature is signature:
                return name
        for name, predictor in program.named_predictors():
            sig = predictor.signature
            if (list(sig.input_fields) == list(getattr(signature, "input_fields", {}))
                    and set(sig.output_fields) <= set(getattr(signature, "output_fields", {}))
                    and sig.instructions == getattr(signature, "instructions", None)):
                return name
        return None


def _short_error(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(value: Any) -> Any:
    """JSON-friendly copy of trace values (pydantic models and other objects become strings or dicts)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "model_dump"):
        try:
            return value.model_dump(mode="json")
        except Exception:
            return str(value)
    return str(value)
