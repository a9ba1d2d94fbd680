"""Usage ledger (calls and tokens per LM role, model and phase) and hard call budgets."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

logger = logging.getLogger(__name__)

STUDENT = "student"
TEACHER = "teacher"


class BudgetExhaustedError(RuntimeError):
    """The next LM call would pass ``max_student_calls`` or ``max_teacher_calls``."""

    def __init__(self, role: str, limit: int) -> None:
        self.role, self.limit = role, limit
        super().__init__(f"{role} call budget of {limit} is used up")


@dataclass
class UsageRow:
    role: str
    phase: str
    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None


class Ledger:
    """Counts every LM call that reached a model (cache hits are free and not counted), per role/phase/model."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], UsageRow] = {}
        self._lock = threading.Lock()

    def record(
        self, role: str, phase: str, model: str, usage: dict[str, Any] | None, cost: float | None = None
    ) -> None:
        usage = usage or {}
        with self._lock:
            row = self._rows.setdefault((role, phase, model), UsageRow(role, phase, model))
            row.calls += 1
            row.input_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            row.output_tokens += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
            if cost is not None:
                row.cost = (row.cost or 0.0) + cost

    def calls(self, role: str | None = None, phase: str | None = None) -> int:
        with self._lock:
            return sum(
                r.calls for r in self._rows.values()
                if (role is None or r.role == role) and (phase is None or r.phase == phase)
            )

    def __getstate__(self) -> dict[str, Any]:  # locks do not copy or pickle: rebuild one
        with self._lock:
            return {"_rows": {k: UsageRow(**vars(v)) for k, v in self._rows.items()}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._rows = state["_rows"]
        self._lock = threading.Lock()

    def rows(self) -> list[UsageRow]:
        with self._lock:
            rows = [UsageRow(**vars(r)) for r in self._rows.values()]
        for row in rows:
            if row.cost is None:
                row.cost = _price(row.model, row.input_tokens, row.output_tokens)
        return rows

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per role: calls, input_tokens, output_tokens and cost (None where no price is known)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            total = out.setdefault(row.role, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost": None})
            total["calls"] += row.calls
            total["input_tokens"] += row.input_tokens
            total["output_tokens"] += row.output_tokens
            if row.cost is not None:
                total["cost"] = (total["cost"] or 0.0) + row.cost
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        with self._lock:
            return [vars(r).copy() for r in self._rows.values()]

    @classmethod
    def from_dict(cls, rows: list[dict[str, Any]]) -> Ledger:
        ledger = cls()
        for row in rows:
            ledger._rows[(row["role"], row["phase"], row["model"])] = UsageRow(**row)
        return ledger

    def frame(self):
        import pandas as pd

        return pd.DataFrame([vars(r) for r in self.rows()], columns=list(UsageRow.__dataclass_fields__))


UNPRICED_PREFIXES = ("local/", "simulated/")  # in-process engines: no bill


def _price(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """USD from DSPy's model-price snapshot (LiteLLM's price table, the one DSPy prices its own calls with);
    None when the model is not in it (local models, unknown names)."""
    if model.startswith(UNPRICED_PREFIXES):
        return None
    try:
        from dspy.clients.model_metadata import model_info, rate

        provider, _, name = model.partition("/")
        info = model_info(provider, name) if name else model_info("openai", model)
        price_in, price_out = rate(info, "input_cost_per_token"), rate(info, "output_cost_per_token")
    except Exception:  # advisory only: a missing or unreadable price table is not an error
        return None
    if price_in is None or price_out is None:
        return None
    return input_tokens * price_in + output_tokens * price_out


class _LedgerTracker(UsageTracker):
    """A DSPy usage tracker that books each finished (non-cached) LM call into the ledger.

    DSPy calls ``add_usage`` once per LM call that reached the model, in the calling thread's settings context,
    so a tracker installed with ``dspy.context(usage_tracker=...)`` sees exactly the calls of that block.
    Calls are forwarded to a tracker the caller had installed, so ``dspy.track_usage()`` keeps working.
    """

    def __init__(self, ledger: Ledger, role: str, phase: str, parent: Any = None) -> None:
        super().__init__()
        self.ledger, self.role, self.phase, self.parent = ledger, role, phase, parent
        self.calls = 0

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.calls += 1
        self.ledger.record(self.role, self.phase, lm, usage_entry)
        if self.parent is not None:
            self.parent.add_usage(lm, usage_entry)


class Budget:
    """Hard limits on LM calls per role, enforced by reserving calls before work starts.

    ``reserve`` is called before a unit of work (one program run, one teacher call) with an upper bound of the
    calls it can make; it raises ``BudgetExhaustedError`` when the calls already made plus those reserved by work in
    flight plus the new reservation would pass the limit. ``settle`` releases the reservation once the work's
    actual calls are booked in the ledger.
    """

    def __init__(self, ledger: Ledger, max_student_calls: int | None, max_teacher_calls: int | None) -> None:
        self.ledger = ledger
        self.limits = {STUDENT: max_student_calls, TEACHER: max_teacher_calls}
        self._reserved = {STUDENT: 0, TEACHER: 0}
        self._lock = threading.Lock()

    def reserve(self, role: str, calls: int) -> None:
        limit = self.limits[role]
        with self._lock:
            if limit is not None and self.ledger.calls(role) + self._reserved[role] + calls > limit:
                raise BudgetExhaustedError(role, limit)
            self._reserved[role] += calls

    def settle(self, role: str, calls: int) -> None:
        with self._lock:
            self._reserved[role] = max(0, self._reserved[role] - calls)

    @contextmanager
    def track(self, role: str, phase: str, reserve: int = 0) -> Iterator[_LedgerTracker]:
        """Book the LM calls made inside the block as ``role``/``phase``, holding ``reserve`` calls meanwhile."""
        if reserve:
            self.reserve(role, reserve)
        tracker = _LedgerTracker(self.ledger, role, phase, parent=dspy.settings.usage_tracker)
        try:
            with dspy.context(usage_tracker=tracker):
                yield tracker
        finally:
            if reserve:
                self.settle(role, reserve)
