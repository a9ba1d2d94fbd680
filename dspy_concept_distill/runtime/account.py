"""What the decisions of a compile may spend: the student calls of the work they need, apart from work run ahead.

A compile's decisions must be the same at any thread count. Work run ahead on spare threads (``racing``) is paid
for at once and may turn out not to be needed, so the decisions cannot be taken on the budget that is left in fact:
at more threads less would be left. Instead every decision is taken on this account, which books only *required*
work, the work a one-thread run does too, once per (variant, example) pair, when it is used. Its limit is the
student budget less ``SPECULATION_SHARE`` of it, the reserve that work ahead may spend and throw away: work ahead
never has more than the reserve's worth outstanding, so the student budget (a hard limit on requests) always has
room for the required work this account allows. At one thread nothing runs ahead and the reserve is not spent.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

SPECULATION_SHARE = 0.05  # of the student budget, held back for work run ahead on spare threads


class RequiredAccount:
    """Student calls of required work, booked once per pair; ``limit`` reads the current student budget (None:
    no limit)."""

    def __init__(self, limit: Callable[[], int | None]) -> None:
        self._limit = limit
        self._charged: set[tuple[str, str]] = set()
        self._ahead: set[tuple[str, str]] = set()  # pairs run ahead and not yet required
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, key: tuple[str, str], calls: int) -> None:
        """Book the ``calls`` of a required run of pair ``key`` (once per pair)."""
        with self._lock:
            self._ahead.discard(key)
            if key not in self._charged:
                self._charged.add(key)
                self.used += calls

    def run_ahead(self, key: tuple[str, str]) -> bool:
        """Note a pair about to be run ahead; False (and nothing noted) if it is required already or ahead."""
        with self._lock:
            if key in self._charged or key in self._ahead:
                return False
            self._ahead.add(key)
            return True

    @property
    def ahead(self) -> int:
        """Pairs run ahead and not (yet) required: what work ahead may have spent beyond the required work."""
        with self._lock:
            return len(self._ahead)

    def charged(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return key in self._charged

    @property
    def reserve(self) -> int:
        """Student calls held back for work run ahead."""
        limit = self._limit()
        return 0 if limit is None else math.ceil(SPECULATION_SHARE * limit)

    def left(self) -> float:
        """Student calls the decisions may still spend (inf: no budget)."""
        limit = self._limit()
        if limit is None:
            return math.inf
        return max(0, limit - self.reserve - self.used)
