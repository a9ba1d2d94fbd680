"""Scoring program variants on examples, in parallel, with one cache.

A *variant* is the caller's program with a RuleSet rendered into its instructions. Every (variant, example)
pair is run at most once per compile: ``EvalCache`` maps ``(variant_key, example_key)`` to an ``Outcome``. Each run
is metered (see ``metering``): every LM request it makes, through whatever LM the program picks, is budgeted and
booked, so the budget is exact at any thread count.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError, LMError, LMInvalidRequestError, LMUnsupportedFeatureError

from ..errors import StudentLMError
from ..records import ErrorKind, Outcome, Step
from ..rules import RuleSet, render_instructions
from .account import RequiredAccount
from .executor import Executor, StopRequestedError, StopSignal
from .metering import Budget, BudgetExhaustedError, Meter, Role
from .metric import MetricAdapter
from .progress import progress

logger = logging.getLogger(__name__)


STOPPING_ERRORS = (BudgetExhaustedError, StudentLMError, StopRequestedError)  # end a run; finished work is kept


def example_key(example: dspy.Example) -> str:
    """A content hash of the example (inputs and labels), so the same example is never scored twice."""
    payload = json.dumps(example.toDict(), sort_keys=True, default=repr)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def variant_key(instructions: dict[str, str]) -> str:
    payload = json.dumps(sorted(instructions.items()))
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def is_lm_infrastructure_error(exc: BaseException) -> bool:
    """LM failures that say nothing about the prompt (network, auth, quota, server). A request the model rejects
    (e.g. context window exceeded) is an outcome of the prompt, so it counts as a mistake instead."""
    return isinstance(exc, LMError) and not isinstance(exc, (LMInvalidRequestError, LMUnsupportedFeatureError))


class EvalCache:
    """Outcomes by ``(variant_key, example_key)``; ``on_put`` (e.g. a checkpoint journal) sees every new one."""

    def __init__(self, on_put: Callable[[tuple[str, str], Outcome], None] | None = None) -> None:
        self._data: dict[tuple[str, str], Outcome] = {}
        self._lock = threading.Lock()
        self.on_put = on_put

    def get(self, key: tuple[str, str]) -> Outcome | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: tuple[str, str], outcome: Outcome) -> None:
        with self._lock:
            if key in self._data:
                return
            self._data[key] = outcome
        if self.on_put is not None:
            self.on_put(key, outcome)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def values(self) -> list[Outcome]:
        with self._lock:
            return list(self._data.values())

    def dump(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"variant": v, "example": e, "outcome": o.to_dict()} for (v, e), o in self._data.items()]

    def load(self, records: Iterable[dict[str, Any]]) -> int:
        """Add dumped records (without calling ``on_put``); returns how many were added."""
        added = 0
        with self._lock:
            for record in records:
                key = (str(record["variant"]), str(record["example"]))
                if key not in self._data:
                    self._data[key] = Outcome.from_dict(record["outcome"])
                    added += 1
        return added


class _NotRun:
    """A job that did not run: the budget ran out or a stop was requested."""

    def __init__(self, reason: BaseException) -> None:
        self.reason = reason


class Evaluator:
    """Runs variants of one program on examples, caching every outcome."""

    def __init__(self, program: dspy.Module, base_instructions: dict[str, str], metric: MetricAdapter,
                 budget: Budget, executor: Executor, stop: StopSignal, cache: EvalCache,
                 failure_score: float = 0.0, account: RequiredAccount | None = None) -> None:
        self.program = program
        self.base_instructions = dict(base_instructions)
        self.metric = metric
        self.budget = budget
        self.executor = executor
        self.stop = stop
        self.cache = cache
        self.failure_score = failure_score
        self.account = account or RequiredAccount(lambda: budget.limit(Role.STUDENT))  # what the decisions may spend
        self._variants: dict[str, tuple[dspy.Module, dict[int, str]]] = {}
        self._keys: dict[RuleSet, str] = {}
        self._example_keys: dict[int, tuple[dspy.Example, str]] = {}  # by id; holding the example keeps its id unique
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str], Future[Outcome | _NotRun]] = {}
        self._warned_metric = False

    # -- variants -------------------------------------------------------------------------------------------------
    def instructions_for(self, ruleset: RuleSet) -> dict[str, str]:
        return {name: render_instructions(base, ruleset.for_predictor(name))
                for name, base in self.base_instructions.items()}

    def key(self, ruleset: RuleSet) -> str:
        with self._lock:
            if ruleset not in self._keys:
                self._keys[ruleset] = variant_key(self.instructions_for(ruleset))
            return self._keys[ruleset]

    def unbooked(self, jobs: Sequence[tuple[RuleSet, dspy.Example]]) -> int:
        """How many distinct (ruleset, example) pairs among ``jobs`` the account has not booked yet: the program runs
        running them as required work would still cost."""
        keys = {(self.key(ruleset), self.example_key_of(example)) for ruleset, example in jobs}
        return sum(not self.account.charged(key) for key in keys)

    def variant(self, ruleset: RuleSet) -> tuple[dspy.Module, dict[int, str]]:
        """The runnable variant and its predictors' names by ``id``."""
        return self._variant(self.key(ruleset), ruleset)

    def _variant(self, key: str, ruleset: RuleSet) -> tuple[dspy.Module, dict[int, str]]:
        found = self._variants.get(key)
        if found is not None:
            return found
        with self._lock:
            if key not in self._variants:
                program = ruleset.apply(self.program, self.base_instructions)
                names = {}
                for name, predictor in program.named_predictors():
                    names[id(predictor)] = name
                self._variants[key] = (program, names)
            return self._variants[key]

    def example_key_of(self, example: dspy.Example) -> str:
        """``example_key(example)``, hashed once per example object for the evaluator's life (one compile)."""
        found = self._example_keys.get(id(example))
        if found is None or found[0] is not example:
            found = self._example_keys[id(example)] = (example, example_key(example))
        return found[1]

    # -- cache ----------------------------------------------------------------------------------------------------
    def cached(self, ruleset: RuleSet, example: dspy.Example) -> Outcome | None:
        return self.cache.get((self.key(ruleset), self.example_key_of(example)))

    def scores(self, ruleset: RuleSet, examples: Sequence[dspy.Example]) -> list[float | None]:
        return [o.score if (o := self.cached(ruleset, ex)) is not None else None for ex in examples]

    # -- running --------------------------------------------------------------------------------------------------
    def submit(self, ruleset: RuleSet, example: dspy.Example, phase_name: str, *,
               urgent: bool = False) -> Future[Outcome | _NotRun]:
        """Score one pair in the background (at once from the cache when it was run before); ``urgent`` jobs start
        before every job still waiting."""
        return self._submit((self.key(ruleset), self.example_key_of(example)), ruleset, example, phase_name,
                            urgent=urgent)

    def _submit(self, key: tuple[str, str], ruleset: RuleSet, example: dspy.Example,
                phase_name: str, *, urgent: bool = False) -> Future[Outcome | _NotRun]:
        hit = self.cache.get(key)
        with self._lock:
            running = self._in_flight.get(key)  # asked for again while it runs: share the run, never repeat it
            if running is not None:
                return running
            if hit is None:  # a run that finished since the lookup above is cached before it leaves _in_flight
                hit = self.cache.get(key)
            if hit is not None:
                done: Future[Outcome | _NotRun] = Future()
                done.set_result(hit)
                return done
            shared: Future[Outcome | _NotRun] = Future()
            self._in_flight[key] = shared

        def settle(job: Future) -> None:
            with self._lock:
                self._in_flight.pop(key, None)
            if job.cancelled():  # the executor closed before the job started
                shared.cancel()
            elif job.exception() is not None:
                shared.set_exception(job.exception())
            else:
                shared.set_result(job.result())

        self.executor.submit(self._job, key, ruleset, example, phase_name, urgent=urgent).add_done_callback(settle)
        return shared

    def prefetch(self, jobs: Sequence[tuple[RuleSet, dspy.Example]], phase_name: str) -> None:
        """Start jobs in the background without waiting; a later ``run`` of the same pairs shares them."""
        for ruleset, example in jobs:
            self.submit(ruleset, example, phase_name)

    def run(self, jobs: Sequence[tuple[RuleSet, dspy.Example]], phase: str, desc: str | None = None,
            on_usable: Callable[[], None] | None = None) -> list[Outcome]:
        """Outcomes for (ruleset, example) jobs, running only those not cached, in parallel; ``desc`` shows a
        progress bar with the running mean score. ``on_usable`` is called once, from whichever thread finished
        the job, as soon as the outcomes show that neither the metric nor the program fails on every example.

        Raises ``BudgetExhaustedError``, ``StopRequestedError`` or ``StudentLMError`` once the batch is over if some
        jobs could not run; every job that did finish is in the cache first, so no finished work is lost.
        """
        futures, seen = [], {}
        last: tuple[RuleSet | None, str] = (None, "")  # jobs come in runs of one ruleset: hash it once per run
        for ruleset, example in jobs:
            if ruleset is not last[0]:
                last = (ruleset, self.key(ruleset))
            key = (last[1], self.example_key_of(example))
            if key not in seen:
                seen[key] = self._submit(key, ruleset, example, phase)
            futures.append(seen[key])
        if on_usable is not None:
            _call_once_usable(list(seen.values()), on_usable)
        results = self._collect(seen, desc)
        for key, result in results.items():  # required work: booked on the account, finished runs only
            if isinstance(result, Outcome):
                self.account.charge(key, result.calls)
        raise_if_incomplete(list(results.values()), len(results))
        return [f.result() for f in futures]  # type: ignore[misc]

    @staticmethod
    def _collect(seen: dict[tuple[str, str], Future], desc: str | None) -> dict[tuple[str, str], Any]:
        """Wait for every job; with ``desc``, a progress bar whose running mean is refreshed about 100 times."""
        bar = progress(total=len(seen), desc=desc) if desc else None
        every = max(1, -(-len(seen) // 100))  # ceil: at most 100 refreshes, plus the last
        results, total, scored = {}, 0.0, 0
        try:
            for done, (key, future) in enumerate(seen.items(), 1):
                results[key] = result = future.result()
                if bar is None:
                    continue
                bar.update(1)
                if isinstance(result, Outcome):
                    total, scored = total + result.score, scored + 1
                if scored and (done % every == 0 or done == len(seen)):
                    bar.set_postfix(score=f"{total / scored:.3f}")
        finally:
            if bar is not None:
                bar.close()
        return results

    def _job(self, key: tuple[str, str], ruleset: RuleSet, example: dspy.Example,
             phase_name: str) -> Outcome | _NotRun | BaseException:
        if self.stop.requested:
            return _NotRun(StopRequestedError(f"stopped on request: {self.stop.reason}"))
        if self.budget.remaining(Role.STUDENT) == 0:
            return _NotRun(BudgetExhaustedError(Role.STUDENT, self.budget.limit(Role.STUDENT) or 0))
        program, names = self._variant(key[0], ruleset)
        meter = Meter(self.budget, Role.STUDENT, phase_name)
        result = self._run_program(program, names, example, meter)
        if meter.refusals:
            return _NotRun(meter.refusals[0])
        if isinstance(result, BudgetExhaustedError):
            return _NotRun(result)
        if isinstance(result, Outcome):
            self.cache.put(key, result)
        elif is_lm_infrastructure_error(result) and not len(self.cache):
            # Nothing has ever worked: the LM is unreachable (a wrong key, a closed port). Stop at once rather than
            # paying every queued run's retries to learn it again.
            self.budget.close(f"the student LM failed on its first requests: {result}")
        return result

    def _run_program(self, program: dspy.Module, names: dict[int, str], example: dspy.Example,
                     meter: Meter) -> Outcome | BaseException:
        """Run ``program`` on ``example`` (its LM requests metered by ``meter``, which counts them in
        ``Outcome.calls``), then score it; the metric's own LM calls, if any, are not the program's."""
        trace: list[Any] = []
        try:
            with meter.active(), dspy.context(trace=trace):
                prediction = program(**example.inputs())
        except BudgetExhaustedError as exc:
            return exc
        except AdapterParseError as exc:
            return self._failure(trace, names, ErrorKind.PARSE, exc, raw=exc.lm_response,
                                 failed=_predictor_for_signature(program, exc.signature), calls=meter.calls)
        except Exception as exc:
            if is_lm_infrastructure_error(exc):
                logger.info("student LM failure on an example: %s", exc)
                return exc
            return self._failure(trace, names, ErrorKind.EXCEPTION, exc, calls=meter.calls)  # raised by program code
        steps = _steps(trace, names)
        calls = meter.calls
        try:
            score, feedback = self.metric(example, prediction)
        except Exception as exc:
            self._warn_metric(exc)
            return Outcome(score=self.failure_score, steps=steps, error=_short_error(exc), error_kind=ErrorKind.METRIC,
                           calls=calls)
        return Outcome(score=score, feedback=feedback, steps=steps, calls=calls)

    def _warn_metric(self, exc: Exception) -> None:
        with self._lock:
            if self._warned_metric:
                return
            self._warned_metric = True
        logger.warning("the metric failed on an example, which scores %s (a metric error, recorded per example; "
                       "this warning is shown once): %r", self.failure_score, exc)

    def _failure(self, trace, names, kind, exc, *, raw=None, failed=None, calls=0) -> Outcome:
        return Outcome(score=self.failure_score, steps=_steps(trace, names), error=_short_error(exc), error_kind=kind,
                       raw_text=raw, failed_predictor=failed, calls=calls)


def _call_once_usable(futures: Sequence[Future], callback: Callable[[], None]) -> None:
    """Call ``callback`` once some outcome is not a metric error and some outcome is not a program exception: the
    run cannot then fail fast (see ``phases.mistakes.collect_mistakes``). It runs in a copy of the caller's context, so
    work it starts from a worker thread keeps the caller's ``dspy.context`` settings."""
    lock, seen, called = threading.Lock(), set(), [False]
    context = contextvars.copy_context()

    def check(future: Future) -> None:
        outcome = None if future.exception() is not None else future.result()
        if not isinstance(outcome, Outcome):
            return
        with lock:
            seen.update({ErrorKind.METRIC, ErrorKind.EXCEPTION} - {outcome.error_kind})
            if called[0] or len(seen) < 2:
                return
            called[0] = True
        context.run(callback)

    for future in futures:
        future.add_done_callback(check)


def raise_if_incomplete(results: Sequence[Any], total: int) -> None:
    """Raise why some jobs did not finish (a student LM failure first, then a stop, then the budget)."""
    infra = [r for r in results if isinstance(r, BaseException)]
    if infra:
        raise StudentLMError(f"the student LM failed on {len(infra)} of {total} runs: {infra[0]}") from infra[0]
    not_run = [r.reason for r in results if isinstance(r, _NotRun)]
    if not_run:
        stops = [r for r in not_run if isinstance(r, StopRequestedError)]
        raise stops[0] if stops else not_run[0]


def _steps(trace: list[Any], names: dict[int, str]) -> list[Step]:
    steps = []
    for predictor, inputs, prediction in trace:
        outputs = dict(prediction.items()) if hasattr(prediction, "items") else {"output": prediction}
        steps.append(Step(names.get(id(predictor), type(predictor).__name__), _plain(inputs), _plain(outputs)))
    return steps


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
    if isinstance(value, (str, int, float, bool)) or value is None:  # the common case first
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        try:
            return value.model_dump(mode="json")
        except Exception:
            return str(value)
    return str(value)
