"""Every exception the package raises on its own account, in one place.

Users catch ``DistillationError`` (exported by the package): a compile or ``verify`` that could not produce any
evidence about a rule raises one of its subclasses, which names the cause; each carries the partial
``DistillationResult`` (``.result``: what was measured and spent) once the run has one. With
``ConceptDistillation(on_failure="return")`` the unchanged program comes back instead, with one WARNING line.

The others are internal signals that end a run early, keeping what was verified (``BudgetExhaustedError``,
``RunClosedError``, ``StudentLMError``, ``StopRequestedError``); a finished run reports them in
``DistillationResult.stopped``.
"""

from __future__ import annotations

from typing import Any


class DistillationError(RuntimeError):
    """A compile (or ``verify``) that could not produce evidence about any rule; the message names the cause."""

    result: Any = None  # the DistillationResult of the run so far, once there is one


class LMUnavailableError(DistillationError):
    """The student or the teacher LM failed on its first requests (authentication, connection, quota, server) and
    never answered: nothing could be measured. ``role`` is ``"student"`` or ``"teacher"``."""

    def __init__(self, role: str, cause: BaseException | str) -> None:
        self.role = role
        self.model = getattr(cause, "model", None)
        what = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(cause)
        super().__init__(f"the {role} LM failed on its first requests and never answered, so nothing could be "
                         "measured (check its model name, api_key and api_base; a plain call such as lm('hi') shows "
                         f"the same error): {what}")


class MetricFailedError(DistillationError, ValueError):
    """The metric failed (raised, or returned something that is not a finite number) on every example of a set."""


class ProgramFailedError(DistillationError, ValueError):
    """The program raised on every example of a set."""


class BudgetTooSmallError(DistillationError):
    """The budget was used up (or cannot pay for the runs every compile makes) before any candidate rule was
    raced on the valset."""


class BudgetExhaustedError(RuntimeError):
    """The next LM request would pass a hard limit (``max_student_calls``, ``max_teacher_calls``, tokens, USD)."""

    def __init__(self, role: str, limit: float, what: str = "call") -> None:
        self.role, self.limit, self.what = role, limit, what
        super().__init__(f"{role} {what} budget of {limit:g} is used up")


class RunClosedError(BudgetExhaustedError):
    """The run is over (finished or interrupted): an LM request a program run still in flight would make is not
    sent. Handled like a used-up budget: the run's outcome is not recorded, so nothing is learned from it."""

    def __init__(self, role: str, reason: str) -> None:
        self.role, self.limit, self.what = role, 0, "call"
        RuntimeError.__init__(self, f"no more {role} requests: {reason}")


class StudentLMError(RuntimeError):
    """The student LM itself failed (connection, auth, rate limit, server error) after the retries."""


class StopRequestedError(RuntimeError):
    """A stop was requested (stop file, SIGTERM, Ctrl-C): the run ends, keeping what was verified."""
