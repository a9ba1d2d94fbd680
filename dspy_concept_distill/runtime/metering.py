"""Usage ledger (requests, cache hits and tokens per LM role, phase and model) and exact, hard call budgets.

Every LM the optimizer runs is a *metered* copy (``metered``): before each request it takes a permit from the
``Budget`` (so requests in flight can never pass the limit, at any thread count), it books what the request
cost in the ``Ledger`` once the request is done, and it does the LM's retries itself, one permit per attempt, so
retried requests are booked too. Replies answered from DSPy's cache cost nothing and are counted apart.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import dspy
from dspy.utils.exceptions import is_retryable_lm_error
from dspy.utils.usage_tracker import UsageTracker

from .ledger import Ledger

logger = logging.getLogger(__name__)


class Role(StrEnum):
    STUDENT = "student"
    TEACHER = "teacher"


STUDENT = Role.STUDENT
TEACHER = Role.TEACHER
MAX_RETRY_DELAY = 30.0

_phase: contextvars.ContextVar[str] = contextvars.ContextVar("cd_phase", default="other")
_refusals: contextvars.ContextVar[list[BaseException] | None] = contextvars.ContextVar("cd_refusals", default=None)


class BudgetExhaustedError(RuntimeError):
    """The next LM request would pass ``max_student_calls`` or ``max_teacher_calls``."""

    def __init__(self, role: str, limit: float, what: str = "call") -> None:
        self.role, self.limit, self.what = role, limit, what
        super().__init__(f"{role} {what} budget of {limit:g} is used up")


class RunClosedError(BudgetExhaustedError):
    """The run is over (finished or interrupted): an LM request a program run still in flight would make is not
    sent. Handled like a used-up budget: the run's outcome is not recorded, so nothing is learned from it."""

    def __init__(self, role: str, reason: str) -> None:
        self.role, self.limit, self.what = role, 0, "call"
        RuntimeError.__init__(self, f"no more {role} requests: {reason}")


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
    request ran on.
    """

    def __init__(self, ledger: Ledger, max_student_calls: int | None, max_teacher_calls: int | None,
                 parent_tracker: Any = None, *, max_tokens: int | None = None,
                 max_cost_usd: float | None = None) -> None:
        self.ledger = ledger
        self.limits: dict[str, int | None] = {STUDENT: max_student_calls, TEACHER: max_teacher_calls}
        self.max_tokens, self.max_cost_usd = max_tokens, max_cost_usd
        self._expected: dict[str, tuple[float, float]] = {}  # role -> (tokens, USD) per request before any is seen
        self.parent_tracker = parent_tracker
        self._in_flight = {STUDENT: 0, TEACHER: 0}
        self._exhausted: set[str] = set()
        self.last_refusal: BudgetExhaustedError | None = None
        self._closed: str | None = None
        self._lock = threading.Lock()

    def close(self, reason: str) -> None:
        """Refuse every request from now on (``RunClosedError``): the program runs still in flight stop at their
        next LM request instead of making all their calls."""
        with self._lock:
            self._closed = self._closed or reason

    def acquire(self, role: str) -> None:
        limit = self.limits[role]
        with self._lock:
            if self._closed is not None:
                error = RunClosedError(role, self._closed)
                if (refusals := _refusals.get()) is not None:
                    refusals.append(error)
                raise error
            if limit is not None and self.ledger.calls(role) + self._in_flight[role] + 1 > limit:
                self._exhausted.add(role)
                error = self.last_refusal = BudgetExhaustedError(role, limit)
                if (refusals := _refusals.get()) is not None:
                    refusals.append(error)
                raise error
            if (error := self._spend_refusal(role)) is not None:
                self._exhausted.add(role)
                self.last_refusal = error
                if (refusals := _refusals.get()) is not None:
                    refusals.append(error)
                raise error
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

    def settle(self, role: str, model: str, usage: dict[str, Any] | None, *, cache_hit: bool = False) -> None:
        phase = _phase.get()
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

    def exhausted(self, role: str) -> bool:
        """Whether a request of ``role`` was refused for lack of budget."""
        with self._lock:
            return role in self._exhausted

    def remaining(self, role: str) -> int | None:
        limit = self.limits[role]
        with self._lock:
            return None if limit is None else max(0, limit - self.ledger.calls(role) - self._in_flight[role])


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Book the metered LM requests made inside the block (in this thread, or threads it starts) as ``name``."""
    token = _phase.set(name)
    try:
        yield
    finally:
        _phase.reset(token)


@contextmanager
def refusals() -> Iterator[list[BaseException]]:
    """Collect the budget refusals of the block (threads it starts included), even those program code swallowed."""
    found: list[BaseException] = []
    token = _refusals.set(found)
    try:
        yield found
    finally:
        _refusals.reset(token)


class _Meter:
    """What a metered LM copy shares: the budget, its role, and the retry policy of the LM it copies."""

    def __init__(self, budget: Budget, role: str, retries: int) -> None:
        self.budget, self.role, self.retries = budget, role, retries

    def __copy__(self) -> _Meter:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Meter:
        return self

    def call(self, model: str, n: int, send: Callable[[], Any]) -> Any:
        for attempt in range(self.retries + 1):
            for taken in range(n):
                try:
                    self.budget.acquire(self.role)
                except BudgetExhaustedError:
                    for _ in range(taken):
                        self.budget.release(self.role)
                    raise
            tracker = _CallTracker()
            try:
                with dspy.context(usage_tracker=tracker):
                    result = send()
            except BaseException as exc:  # an interrupt too: the request was sent, so it is booked
                self._settle(model, n, tracker.entries, failed=True)
                if attempt >= self.retries or not isinstance(exc, Exception) or not is_retryable_lm_error(exc):
                    raise
                time.sleep(retry_delay(exc, attempt))
                continue
            self._settle(model, n, tracker.entries, failed=False)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _settle(self, model: str, n: int, entries: list[tuple[str, dict[str, Any]]], *, failed: bool) -> None:
        """Book ``n`` requests. DSPy reports usage for every request that reached the model and none for a reply
        from its cache; a request that failed reached the model (or was refused by it) all the same."""
        for i in range(n):
            lm_name, usage = entries[i] if i < len(entries) else (model, None)
            cache_hit = not failed and not entries
            self.budget.settle(self.role, lm_name or model, usage, cache_hit=cache_hit)


def retry_delay(exc: BaseException, attempt: int) -> float:
    """Seconds to wait before retry ``attempt + 1``: the server's ``retry_after`` when it gives a finite one (0
    included), else exponential back-off; never more than ``MAX_RETRY_DELAY``."""
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and math.isfinite(hint) and hint >= 0:
        return min(float(hint), MAX_RETRY_DELAY)
    return min(float(2**attempt), MAX_RETRY_DELAY)


_METERED_CLASSES: dict[type, type] = {}


def _metered_class(cls: type) -> type:
    if cls not in _METERED_CLASSES:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
            return self._cd_meter.call(self.model, _n(self, kwargs), lambda: cls.__call__(self, *args, **kwargs))

        _METERED_CLASSES[cls] = type(f"Metered{cls.__name__}", (cls,), {"__call__": __call__, "_cd_metered": True})
    return _METERED_CLASSES[cls]


def _n(lm: Any, kwargs: dict[str, Any]) -> int:
    value = kwargs.get("n", (getattr(lm, "kwargs", None) or {}).get("n", 1))
    return value if isinstance(value, int) and value > 0 else 1


def metered(lm: dspy.BaseLM, budget: Budget, role: str) -> dspy.BaseLM:
    """A copy of ``lm`` whose every request takes a permit from ``budget`` and is booked as ``role``.

    DSPy's own retries are turned off on the copy and done here instead (same count, exponential back-off or the
    server's retry-after), so each attempt is one permit and one booked request. ``lm`` itself is not changed.
    """
    if getattr(lm, "_cd_metered", False):
        return lm
    retries = int(getattr(lm, "num_retries", 0) or 0)
    copied = lm.copy(num_retries=0) if isinstance(lm, dspy.LM) else lm.copy()
    copied.history = lm.history  # the caller's LM keeps showing the requests made in its name
    copied.__class__ = _metered_class(type(lm))
    copied._cd_meter = _Meter(budget, role, retries)
    return copied
