"""Metering: every LM request the optimizer causes takes a permit from the ``Budget`` first (so requests in flight
can never pass a limit, at any thread count), is booked in the ``Ledger`` once done, and is retried by the meter,
one permit per attempt, so retried requests are booked too. Replies answered from DSPy's cache cost nothing and are
counted apart.

How a request is caught, whatever path the program takes to its LM. The optimizer runs each program run (and each
teacher call) inside ``metering(budget, role, phase)``, which puts a ``Meter`` into DSPy's context
(``dspy.context``: it travels into the threads DSPy starts, such as ``dspy.Parallel``'s, and into ``acall``).
``install()`` wraps DSPy's one LM entry point, ``dspy.BaseLM.__call__`` (and ``acall``), once per process. The
wrapper is inert outside a meter: it calls DSPy's own method with the same arguments. Inside one, it sends the
request through a *metered twin* of the LM object that was called (``lm.copy(num_retries=0)`` sharing the
original's ``history``): named predictors, predictors created inside ``forward``, ``Refine``'s feedback,
``BestOfN``'s and ``Refine``'s LM copies, ``ReAct``'s steps, a predictor's own ``lm`` and ``dspy.context(lm=...)``
inside ``forward`` all reach the LM the program chose (as plain ``dspy.Evaluate`` sends them), metered. The caller's
program and LMs are never changed. Not caught: direct calls of ``lm.forward`` (below DSPy's entry point) and LM
calls from threads the program starts itself without DSPy (they lose ``dspy.context`` too).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import dspy
from dspy.clients import _deprecation
from dspy.utils.exceptions import is_retryable_lm_error
from dspy.utils.usage_tracker import UsageTracker

from ..errors import BudgetExhaustedError, RunClosedError
from .ledger import Ledger

logger = logging.getLogger(__name__)

__all__ = ["MAX_RETRY_DELAY", "METER_KEY", "Budget", "BudgetExhaustedError", "Meter", "Role", "RunClosedError",
           "install", "metered", "metering", "phase", "retry_delay"]


class Role(StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"


MAX_RETRY_DELAY = 30.0
METER_KEY = "_cd_meter"  # the dspy.context key of the active meter

_phase: contextvars.ContextVar[str] = contextvars.ContextVar("cd_phase", default="other")


class _CallTracker(UsageTracker):
    """Receives DSPy's usage report for LM requests made inside its ``dspy.context``."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.entries.append((lm, dict(usage_entry or {})))


class Budget:
    """Exact, hard limits on LM requests per role.

    ``acquire`` takes a permit before a request is sent and raises ``BudgetExhaustedError`` when requests booked
    plus requests in flight would pass the limit; ``settle`` books the finished request and returns the permit.
    Usage is also forwarded to the tracker the caller had installed (``dspy.track_usage()``), whatever thread the
    request ran on. The limits belong to the budget: ``set_limit`` changes one (a student budget stated in program
    runs is converted to requests once the requests per run are measured).
    """

    def __init__(self, ledger: Ledger, max_student_calls: int | None, max_teacher_calls: int | None,
                 parent_tracker: Any = None, *, max_tokens: int | None = None,
                 max_cost_usd: float | None = None) -> None:
        self.ledger = ledger
        self._limits: dict[str, int | None] = {Role.STUDENT: max_student_calls, Role.TEACHER: max_teacher_calls}
        self.max_tokens, self.max_cost_usd = max_tokens, max_cost_usd
        self._expected: dict[str, tuple[float, float]] = {}  # role -> (tokens, USD) per request before any is seen
        self.parent_tracker = parent_tracker
        self._in_flight: dict[str, int] = {Role.STUDENT: 0, Role.TEACHER: 0}
        self._exhausted: set[str] = set()
        self.last_refusal: BudgetExhaustedError | None = None
        self._refused: dict[str, BudgetExhaustedError] = {}
        self._closed: str | None = None
        self._lock = threading.Lock()

    def limit(self, role: str) -> int | None:
        with self._lock:
            return self._limits[role]

    def set_limit(self, role: str, limit: int | None) -> None:
        with self._lock:
            self._limits[role] = limit
            if limit is None or self.ledger.calls(role) + self._in_flight[role] < limit:
                self._exhausted.discard(role)

    def close(self, reason: str) -> None:
        """Refuse every request from now on (``RunClosedError``): the program runs still in flight stop at their
        next LM request instead of making all their calls."""
        with self._lock:
            self._closed = self._closed or reason

    @property
    def closed(self) -> str | None:
        return self._closed

    def acquire(self, role: str) -> None:
        with self._lock:
            limit = self._limits[role]
            if self._closed is not None:
                raise RunClosedError(role, self._closed)
            if limit is not None and self.ledger.calls(role) + self._in_flight[role] + 1 > limit:
                self._exhausted.add(role)
                error = self.last_refusal = self._refused[role] = BudgetExhaustedError(role, limit)
                raise error
            if (refused := self._spend_refusal(role)) is not None:
                self._exhausted.add(role)
                self.last_refusal = self._refused[role] = refused
                raise refused
            self._in_flight[role] += 1

    def _spend_refusal(self, role: str) -> BudgetExhaustedError | None:
        """Refuse a request when tokens or USD spent, plus the requests in flight and this one at this role's
        average so far, would pass ``max_tokens`` or ``max_cost_usd`` (both across roles)."""
        if self.max_tokens is None and self.max_cost_usd is None:
            return None
        _, all_tokens, all_cost = self.ledger.spend()
        ahead = {r: n + (r == role) for r, n in self._in_flight.items()}
        per = {r: self._per_request(r) for r in ahead}
        tokens_ahead = sum(n * per[r][0] for r, n in ahead.items())
        cost_ahead = sum(n * per[r][1] for r, n in ahead.items())
        if self.max_tokens is not None and all_tokens + tokens_ahead > self.max_tokens:
            return BudgetExhaustedError("run", self.max_tokens, "token")
        if self.max_cost_usd is not None and all_cost + cost_ahead > self.max_cost_usd:
            return BudgetExhaustedError("run", self.max_cost_usd, "cost (USD)")
        return None

    def expect(self, role: str, tokens: float, usd: float | None) -> None:
        """What one request of ``role`` is expected to cost until one has been booked (from the prompt sizes)."""
        self._expected[role] = (tokens, usd or 0.0)

    def _per_request(self, role: str) -> tuple[float, float]:
        """Tokens and USD per request of ``role``: the average so far, else the expectation (the larger, while
        fewer than three requests were seen)."""
        calls, tokens, cost = self.ledger.spend(role)
        expected = self._expected.get(role, (0.0, 0.0))
        if not calls:
            return expected
        average = (tokens / calls, cost / calls)
        return (max(average[0], expected[0]), max(average[1], expected[1])) if calls < 3 else average

    def settle(self, role: str, model: str, usage: dict[str, Any] | None, *, cache_hit: bool = False,
               phase: str | None = None) -> None:
        """Book a finished request as ``phase`` (default: the phase of the calling thread) and return its permit."""
        phase = phase or _phase.get()
        with self._lock:
            if cache_hit:
                self.ledger.record_cache_hit(role, phase, model)
            else:
                self.ledger.record(role, phase, model, usage)
                if self.parent_tracker is not None and usage:
                    self.parent_tracker.add_usage(model, usage)
            self._in_flight[role] -= 1

    def release(self, role: str) -> None:
        """Return a permit whose request was never sent."""
        with self._lock:
            self._in_flight[role] -= 1

    def refusal(self, role: str) -> BudgetExhaustedError | None:
        """The last refusal of a request of ``role`` for lack of budget (its own, or the run's tokens or USD)."""
        with self._lock:
            return self._refused.get(role)

    def exhausted(self, role: str) -> bool:
        """Whether a request of ``role`` was refused for lack of budget."""
        with self._lock:
            return role in self._exhausted

    def remaining(self, role: str) -> int | None:
        with self._lock:
            limit = self._limits[role]
            return None if limit is None else max(0, limit - self.ledger.calls(role) - self._in_flight[role])


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Book the metered LM requests made inside the block (in this thread, or threads the optimizer starts) as
    ``name``, unless a ``metering`` block names its own phase."""
    token = _phase.set(name)
    try:
        yield
    finally:
        _phase.reset(token)


class Meter:
    """What the LM requests of one program run (or one teacher call) share: the budget, the role and phase they are
    booked as, the refusals the budget gave (also those the program swallowed: ``ReAct``, ``Refine`` and
    ``BestOfN`` catch exceptions) and how many LM calls were made (``calls``: a call asking for ``n`` completions
    counts ``n``; DSPy cache hits count, retries do not)."""

    def __init__(self, budget: Budget, role: str, phase: str | None = None) -> None:
        self.budget, self.role, self.phase = budget, role, phase  # None: the phase of the thread sending a request
        self.refusals: list[BudgetExhaustedError] = []
        self.calls = 0
        self._lock = threading.Lock()

    @contextmanager
    def active(self) -> Iterator[Meter]:
        """Meter the LM requests made inside the block (in this thread and the threads DSPy starts from it)."""
        install()
        token = _phase.set(self.phase) if self.phase is not None else None
        try:
            with dspy.context(**{METER_KEY: self}):
                yield self
        finally:
            if token is not None:
                _phase.reset(token)

    def __copy__(self) -> Meter:  # one meter per run, wherever DSPy copies its settings to
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Meter:
        return self

    def send(self, lm: Any, dspy_call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Send one LM call through a metered twin of ``lm`` (``dspy_call``: DSPy's own ``BaseLM.__call__``)."""
        twin, retries = _twin(lm)
        n = _n(lm, kwargs)
        for attempt in range(retries + 1):
            self._acquire(n, first=attempt == 0)
            tracker = _CallTracker()
            try:
                with dspy.context(usage_tracker=tracker, **{METER_KEY: None}), _as_adapter_call(lm, twin, kwargs):
                    result = dspy_call(twin, *args, **kwargs)
            except BaseException as exc:  # an interrupt too: the request was sent, so it is booked
                self._settle(lm, n, tracker.entries, failed=True)
                if attempt >= retries or not isinstance(exc, Exception) or not is_retryable_lm_error(exc):
                    raise
                time.sleep(retry_delay(exc, attempt))
                continue
            self._settle(lm, n, tracker.entries, failed=False)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def asend(self, lm: Any, dspy_acall: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        """``send`` for DSPy's async entry point, ``BaseLM.acall``."""
        twin, retries = _twin(lm)
        n = _n(lm, kwargs)
        for attempt in range(retries + 1):
            self._acquire(n, first=attempt == 0)
            tracker = _CallTracker()
            try:
                with dspy.context(usage_tracker=tracker, **{METER_KEY: None}), _as_adapter_call(lm, twin, kwargs):
                    result = await dspy_acall(twin, *args, **kwargs)
            except BaseException as exc:
                self._settle(lm, n, tracker.entries, failed=True)
                if attempt >= retries or not isinstance(exc, Exception) or not is_retryable_lm_error(exc):
                    raise
                await asyncio.sleep(retry_delay(exc, attempt))
                continue
            self._settle(lm, n, tracker.entries, failed=False)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _acquire(self, n: int, *, first: bool) -> None:
        for taken in range(n):
            try:
                self.budget.acquire(self.role)
            except BudgetExhaustedError as refused:
                for _ in range(taken):
                    self.budget.release(self.role)
                with self._lock:
                    self.refusals.append(refused)
                raise
        if first:
            with self._lock:
                self.calls += n

    def _settle(self, lm: Any, n: int, entries: list[tuple[str, dict[str, Any]]], *, failed: bool) -> None:
        """Book ``n`` requests. DSPy reports usage for every request that reached the model and none for a reply
        from its cache; a request that failed reached the model (or was refused by it) all the same."""
        model = str(getattr(lm, "model", "?"))
        for i in range(n):
            lm_name, usage = entries[i] if i < len(entries) else (model, None)
            cache_hit = not failed and not entries
            self.budget.settle(self.role, lm_name or model, usage, cache_hit=cache_hit, phase=self.phase)


def _twin(lm: Any) -> tuple[Any, int]:
    """The object a metered request is sent through, and how many retries the meter does for it: DSPy's own count
    for ``lm`` (the twin does none, so that each attempt takes a permit and is booked)."""
    if getattr(lm, "__dict__", {}).get("_cd_twin_retries") is not None:  # already a twin (``metered``)
        return lm, lm._cd_twin_retries
    retries = _dspy_retries(lm)
    if not retries:
        return lm, 0  # DSPy makes one attempt: the LM itself is the twin
    twin = lm.copy(num_retries=0)
    twin.history = lm.history  # the caller's LM keeps showing the requests made in its name
    if hasattr(lm, "_warned_zero_temp_rollout"):
        twin._warned_zero_temp_rollout = lm._warned_zero_temp_rollout
    return twin, retries


def _as_adapter_call(lm: Any, twin: Any, kwargs: dict[str, Any]) -> Any:
    """A call a DSPy adapter makes with ``messages=`` is marked as the adapter's (so DSPy does not warn about
    OpenAI-style messages); the mark names the LM object, so the twin that sends the call inherits it."""
    origin = _deprecation._adapter_call.get()
    if twin is lm or origin is None or origin[0] is not lm or origin[1] is not kwargs.get("messages"):
        return contextlib.nullcontext()
    return _deprecation.adapter_message_call(twin, origin[1])


def _dspy_retries(lm: Any) -> int:
    """The retries DSPy itself makes for a call to ``lm`` (``dspy.clients.execution``: ``lm.num_retries`` for the
    calls it manages, engine-backed LMs; none for a legacy ``forward()`` LM)."""
    if not hasattr(lm, "_engine_spec"):
        return 0
    from dspy.clients.lm import LM
    from dspy.utils.dummies import DummyLM

    base = DummyLM if isinstance(lm, DummyLM) else LM if isinstance(lm, LM) else None
    if base is not None and ("forward" in vars(lm) or type(lm).forward is not base.forward):
        return 0
    return int(getattr(lm, "num_retries", 0) or 0)


def _n(lm: Any, kwargs: dict[str, Any]) -> int:
    value = kwargs.get("n", (getattr(lm, "kwargs", None) or {}).get("n", 1))
    return value if isinstance(value, int) and value > 0 else 1


def _meter_of(lm: Any) -> Meter | None:
    own = getattr(lm, "__dict__", {}).get("_cd_meter")
    return own if own is not None else dspy.settings.get(METER_KEY)


def _entry(dspy_call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(dspy_call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
        meter = _meter_of(self)
        if meter is None:
            return dspy_call(self, *args, **kwargs)
        return meter.send(self, dspy_call, args, kwargs)

    __call__._cd_dspy = dspy_call  # type: ignore[attr-defined]
    return __call__


def _async_entry(dspy_acall: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(dspy_acall)
    async def acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = _meter_of(self)
        if meter is None:
            return await dspy_acall(self, *args, **kwargs)
        return await meter.asend(self, dspy_acall, args, kwargs)

    acall._cd_dspy = dspy_acall  # type: ignore[attr-defined]
    return acall


_install_lock = threading.Lock()


def install() -> None:
    """Wrap ``dspy.BaseLM.__call__`` and ``acall`` (once per process; idempotent). Outside a ``metering`` block the
    wrappers call DSPy's own methods unchanged."""
    base = dspy.BaseLM
    if hasattr(vars(base)["__call__"], "_cd_dspy") and hasattr(vars(base)["acall"], "_cd_dspy"):
        return
    with _install_lock:
        if not hasattr(vars(base)["__call__"], "_cd_dspy"):
            base.__call__ = _entry(vars(base)["__call__"])
        if not hasattr(vars(base)["acall"], "_cd_dspy"):
            base.acall = _async_entry(vars(base)["acall"])


@contextmanager
def metering(budget: Budget, role: str, phase_name: str | None = None) -> Iterator[Meter]:
    """Meter every LM request made inside the block (in this thread and the threads DSPy starts from it): each takes
    a permit from ``budget`` and is booked as ``role`` and ``phase_name`` (default: the thread's ``phase``)."""
    with Meter(budget, role, phase_name or _phase.get()).active() as meter:
        yield meter


def retry_delay(exc: BaseException, attempt: int) -> float:
    """Seconds to wait before retry ``attempt + 1``: the server's ``retry_after`` when it gives a finite one (0
    included), else exponential back-off; never more than ``MAX_RETRY_DELAY``."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and math.isfinite(hint) and hint >= 0:
        return min(float(hint), MAX_RETRY_DELAY)
    return min(float(2**attempt), MAX_RETRY_DELAY)


def metered(lm: dspy.BaseLM, budget: Budget, role: str) -> dspy.BaseLM:
    """A metered twin of ``lm`` that stays metered outside any ``metering`` block: every request takes a permit
    from ``budget`` and is booked as ``role``. DSPy's own retries are turned off on the twin and done by the meter
    instead (same count, exponential back-off or the server's retry-after), so each attempt is one permit and one
    booked request. ``lm`` itself is not changed; the twin shares its history."""
    install()
    if getattr(lm, "__dict__", {}).get("_cd_twin_retries") is not None:
        return lm
    retries = _dspy_retries(lm)
    twin = lm.copy(num_retries=0) if retries else lm.copy()
    twin.history = lm.history
    twin._cd_meter = Meter(budget, role)
    twin._cd_twin_retries = retries
    return twin
