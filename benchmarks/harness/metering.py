"""Counting what each LM role costs, at the LM, whatever optimizer is running.

Every request that reaches a ``dspy.LM`` (or any copy DSPy's optimizers make of it with ``lm.copy(...)``, which
keeps the instance's callbacks) is counted by a callback attached to that LM; tokens come from DSPy's usage
tracker, per model string. Run with DSPy's caches off, so a counted call is a request the model answered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback
from dspy.utils.usage_tracker import UsageTracker


class CallCounter(BaseCallback):
    """Counts the calls of the LM it is attached to (and of that LM's copies), a request for ``n`` completions as
    ``n`` calls. Deep copies share the counter, so an optimizer that deep-copies its LM is still counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        # A request for n completions (COPRO's, MIPROv2's candidates) counts n: the model answers n times.
        n = (inputs.get("kwargs") or {}).get("n") or (getattr(instance, "kwargs", None) or {}).get("n") or 1
        with self._lock:
            self.calls += int(n)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        if exception is not None:
            with self._lock:
                self.failures += 1

    def __deepcopy__(self, memo: dict[int, Any]) -> CallCounter:
        return self


@dataclass(frozen=True)
class Usage:
    """Calls and tokens of one role over a stretch of the run."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.calls - other.calls, self.input_tokens - other.input_tokens,
                     self.output_tokens - other.output_tokens)


class SharedUsageTracker(UsageTracker):
    """DSPy's usage tracker, kept whole across threads: DSPy's ParallelExecutor deep-copies the tracker into each
    worker thread (for per-prediction usage), which would drop every token counted there."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        with self._lock:
            super().add_usage(lm, usage_entry)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedUsageTracker:
        return self


class CallMeter:
    """Calls and tokens per role (e.g. ``student``, ``teacher``) for LMs registered with :meth:`attach`.

    Tokens are tracked per model string, so two roles sharing one model string share their token counts
    (``shared_tokens`` says so); calls are always per role."""

    def __init__(self) -> None:
        self.counters: dict[str, CallCounter] = {}
        self.models: dict[str, str] = {}
        self.tracker = SharedUsageTracker()

    def attach(self, role: str, lm: dspy.LM) -> dspy.LM:
        counter = self.counters.setdefault(role, CallCounter())
        if counter not in lm.callbacks:
            lm.callbacks.append(counter)
        self.models[role] = lm.model
        return lm

    @property
    def shared_tokens(self) -> bool:
        return len(set(self.models.values())) < len(self.models)

    @contextmanager
    def tracking(self) -> Iterator[CallMeter]:
        """Token usage of every LM call inside the block goes to this meter (threads started inside inherit it)."""
        with dspy.context(usage_tracker=self.tracker):
            yield self

    def usage(self, role: str) -> Usage:
        counter = self.counters.get(role)
        totals = self.tracker.get_total_tokens().get(self.models.get(role, ""), {})
        return Usage(counter.calls if counter else 0, int(_tokens(totals, "prompt_tokens", "input_tokens")),
                     int(_tokens(totals, "completion_tokens", "output_tokens")))

    def snapshot(self) -> dict[str, Usage]:
        return {role: self.usage(role) for role in self.counters}


def _tokens(totals: dict[str, Any], *names: str) -> int:
    for name in names:
        value = totals.get(name)
        if isinstance(value, (int, float)):
            return int(value)
    return 0


def disable_caches() -> None:
    """DSPy's disk and memory caches off: every call is a request, and optimizers do not share answers."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
