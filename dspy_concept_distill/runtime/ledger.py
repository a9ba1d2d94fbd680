"""The usage ledger: every LM request that reached a model, booked per role, phase and model with its tokens;
replies from DSPy's cache are counted apart. Priced in USD where the model has a known price."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import Any

from .pricing import price


@dataclass
class UsageRow:
    role: str
    phase: str
    model: str
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None


class Ledger:
    """Counts every LM request that reached a model, per role/phase/model; cache hits are counted apart."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], UsageRow] = {}
        self._lock = threading.Lock()

    def _row(self, role: str, phase: str, model: str) -> UsageRow:
        return self._rows.setdefault((str(role), phase, model), UsageRow(str(role), phase, model))

    def record(self, role: str, phase: str, model: str, usage: dict[str, Any] | None) -> None:
        usage = usage or {}
        with self._lock:
            row = self._row(role, phase, model)
            row.calls += 1
            row.input_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
            row.output_tokens += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)

    def record_cache_hit(self, role: str, phase: str, model: str) -> None:
        with self._lock:
            self._row(role, phase, model).cache_hits += 1

    def calls(self, role: str | None = None, phase: str | None = None) -> int:
        return self._sum("calls", role, phase)

    def spend(self, role: str | None = None) -> tuple[int, int, float]:
        """(requests, tokens, USD) booked for ``role`` (all roles when None); unpriced models cost 0 here."""
        rows = [r for r in self.rows() if role is None or r.role == role]
        return (sum(r.calls for r in rows), sum(r.input_tokens + r.output_tokens for r in rows),
                sum(r.cost or 0.0 for r in rows))

    def cache_hits(self, role: str | None = None, phase: str | None = None) -> int:
        return self._sum("cache_hits", role, phase)

    def _sum(self, attr: str, role: str | None, phase: str | None) -> int:
        with self._lock:
            return sum(getattr(r, attr) for r in self._rows.values()
                       if (role is None or r.role == role) and (phase is None or r.phase == phase))

    def __getstate__(self) -> dict[str, Any]:  # locks do not copy or pickle: rebuild one
        with self._lock:
            return {"_rows": {k: UsageRow(**vars(v)) for k, v in self._rows.items()}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._rows = state["_rows"]
        self._lock = threading.Lock()

    def rows(self) -> list[UsageRow]:
        """Copies of the rows, each priced (USD) where its model has a known price."""
        with self._lock:
            rows = [UsageRow(**vars(r)) for r in self._rows.values()]
        for row in rows:
            row.cost = price(row.model, row.input_tokens, row.output_tokens)
        return rows

    def totals(self) -> dict[str, dict[str, Any]]:
        """Per role: calls, cache_hits, input_tokens, output_tokens and cost (None where no price is known)."""
        out: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            total = out.setdefault(row.role, {"calls": 0, "cache_hits": 0, "input_tokens": 0, "output_tokens": 0,
                                              "cost": None})
            for name in ("calls", "cache_hits", "input_tokens", "output_tokens"):
                total[name] += getattr(row, name)
            if row.cost is not None:
                total["cost"] = (total["cost"] or 0.0) + row.cost
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        with self._lock:
            return [vars(r).copy() for r in self._rows.values()]

    @classmethod
    def from_dict(cls, rows: list[dict[str, Any]]) -> Ledger:
        ledger = cls()
        known = {f.name for f in fields(UsageRow)}
        for row in rows:
            ledger._rows[(row["role"], row["phase"], row["model"])] = UsageRow(
                **{k: v for k, v in row.items() if k in known})
        return ledger

    def frame(self):
        import pandas as pd

        return pd.DataFrame([vars(r) for r in self.rows()], columns=[f.name for f in fields(UsageRow)])
