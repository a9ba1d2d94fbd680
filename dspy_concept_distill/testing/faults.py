"""A fault-injecting DSPy engine for tests: NOT a real model.

``FaultyEngine`` answers like the engine it wraps (a scripted engine from ``dspy_concept_distill.testing``) or
like its own ``reply`` function, and injects the faults a real provider shows: timeouts and stalls, 429 rate
limits (``dspy.lm15.RateLimitError`` with ``retry_after``), 5xx server errors, empty, truncated and garbage
replies; and, for crash and stop tests, SIGKILL, SIGTERM or SIGINT sent to its own process at a given request.

It counts every request it *receives* (``received``), before any fault, so a test can compare the optimizer's
ledger with what the LM saw; ``digests`` holds one hash per request in arrival order (``log_path`` appends them to a
file as they arrive, flushed at once, so a process killed mid-run leaves the list of requests it had sent).
Everything is thread-safe; ``max_in_flight`` is the largest number of requests it ever held at once.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy.lm15 import Message, RateLimitError, Response, ServerError, TextPart, Usage
from dspy.lm15 import TimeoutError as LMTimeout

from .scripted import Prompt, SharedEngineState

TIMEOUT = "timeout"  # raises dspy.lm15.TimeoutError (after ``seconds``)
STALL = "stall"  # answers normally after ``seconds``
RATE_LIMIT = "429"  # raises dspy.lm15.RateLimitError with ``retry_after``
SERVER_ERROR = "5xx"  # raises dspy.lm15.ServerError (HTTP 503)
EMPTY = "empty"  # an empty reply
TRUNCATED = "truncated"  # the first half of the reply, finish_reason "length"
GARBAGE = "garbage"  # text that is no reply format at all
KILL = "kill"  # SIGKILL to this process: the request is received, never answered
SIGTERM = "sigterm"  # SIGTERM to this process, then an ordinary reply
SIGINT = "sigint"  # SIGINT (Ctrl-C) to this process, then an ordinary reply

_SIGNALS = {KILL: signal.SIGKILL, SIGTERM: signal.SIGTERM, SIGINT: signal.SIGINT}
GARBAGE_TEXT = "\x00\ufffd<<<%%% 7f3a ]] [[ ## ## {\"unterminated"


@dataclass(frozen=True)
class Fault:
    kind: str
    seconds: float = 0.0  # how long a stall or timeout takes
    retry_after: float | None = 0.0  # what a 429 tells the client to wait


FaultPlan = Mapping[int, Fault] | Callable[[int, Prompt], Fault | None]


class RequestCounter(SharedEngineState):
    """A request counter that several engines can share, so a fault can hit "the N-th request of the run"."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def next(self) -> int:
        with self._lock:
            index = self._count
            self._count += 1
            return index


def digest(request: Any) -> str:
    """A hash of what a request asks (system prompt, messages, temperature): equal for a repeated request."""
    prompt = Prompt.of(request)
    text = repr((prompt.system, prompt.turns, prompt.temperature))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class FaultyEngine(SharedEngineState):
    """A DSPy engine that wraps ``inner`` (any engine) or answers with ``reply(prompt, index)``, and applies
    ``faults``: a mapping from request index to ``Fault``, or a function ``(index, prompt) -> Fault | None``.

    Indices count this engine's requests from 0, or the shared ``counter``'s when one is given. ``latency``
    (seconds) delays every reply, as a remote model would."""

    def __init__(self, inner: Any = None, *, reply: Callable[[Prompt, int], str] | None = None,
                 faults: FaultPlan | None = None, counter: RequestCounter | None = None, latency: float = 0.0,
                 log_path: str | os.PathLike[str] | None = None, model: str = "faulty") -> None:
        if inner is None and reply is None:
            raise ValueError("FaultyEngine needs an engine to wrap or a reply function")
        # Public attributes are the engine's settings (a checkpoint fingerprint reads them); the fault plan, the
        # request log and the counters are private, so a crash test can resume with the same engine minus the crash.
        self.inner, self.latency, self.model = inner, latency, model
        self._reply_fn, self._faults, self._counter = reply, faults or {}, counter
        self._log_path = Path(log_path) if log_path is not None else None
        self._digests: list[str] = []
        self._injected: list[tuple[int, str]] = []
        self._received_at_fault: list[int] = []
        self._in_flight = self._max_in_flight = 0
        self._lock = threading.Lock()

    @property
    def received(self) -> int:
        """Requests received so far, answered or not."""
        return len(self._digests)

    @property
    def digests(self) -> list[str]:
        with self._lock:
            return list(self._digests)

    @property
    def injected(self) -> list[tuple[int, str]]:
        """(request index, fault kind) of every fault applied."""
        with self._lock:
            return list(self._injected)

    @property
    def received_at_fault(self) -> list[int]:
        """How many requests had arrived when each fault of ``injected`` was applied (requests can arrive from other
        threads between a request's arrival and its fault)."""
        with self._lock:
            return list(self._received_at_fault)

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    # -- the engine protocol ----------------------------------------------------------------------------------------
    def complete(self, request: Any) -> Response:
        prompt = Prompt.of(request)
        with self._lock:
            own = len(self._digests)
            self._digests.append(digest(request))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if self._log_path is not None:
                with self._log_path.open("a", encoding="utf-8") as log:
                    log.write(self._digests[-1] + "\n")
        index = self._counter.next() if self._counter is not None else own
        try:
            return self._answer(request, prompt, index)
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self) -> None:
        pass

    # -- faults -----------------------------------------------------------------------------------------------------
    def fault_for(self, index: int, prompt: Prompt) -> Fault | None:
        if callable(self._faults):
            return self._faults(index, prompt)
        return self._faults.get(index)

    def _answer(self, request: Any, prompt: Prompt, index: int) -> Response:
        fault = self.fault_for(index, prompt)
        if fault is not None:
            with self._lock:
                self._injected.append((index, fault.kind))
                self._received_at_fault.append(len(self._digests))
        if self.latency:
            time.sleep(self.latency)
        kind = fault.kind if fault is not None else None
        if kind in _SIGNALS:
            os.kill(os.getpid(), _SIGNALS[kind])
            time.sleep(0.05)  # let the handler run in the main thread before the reply goes back
        if kind in (STALL, TIMEOUT):
            assert fault is not None
            time.sleep(fault.seconds)
        if kind == TIMEOUT:
            raise LMTimeout(f"request {index} timed out (injected)")
        if kind == RATE_LIMIT:
            assert fault is not None
            raise RateLimitError(f"request {index}: rate limited (injected)", retry_after=fault.retry_after,
                                 status=429)
        if kind == SERVER_ERROR:
            raise ServerError(f"request {index}: service unavailable (injected)", status=503)
        response = self._reply(request, prompt, index)
        text = "".join(getattr(part, "text", "") or "" for part in response.message.parts)
        if kind == EMPTY:
            return _response(self.model, "", prompt)
        if kind == TRUNCATED:
            return _response(self.model, text[: len(text) // 2], prompt, finish_reason="length")
        if kind == GARBAGE:
            return _response(self.model, GARBAGE_TEXT, prompt)
        return response

    def _reply(self, request: Any, prompt: Prompt, index: int) -> Response:
        if self.inner is not None:
            return self.inner.complete(request)
        assert self._reply_fn is not None  # the constructor refuses neither an engine nor a reply function
        return _response(self.model, self._reply_fn(prompt, index), prompt)


def _response(model: str, text: str, prompt: Prompt, finish_reason: str = "stop") -> Response:
    return Response(id=None, model=model, message=Message.assistant([TextPart(text)]), finish_reason=finish_reason,
                    usage=Usage(input_tokens=max(1, prompt.chars // 4), output_tokens=max(1, len(text) // 4)))


def faulty_lm(model: str, engine: FaultyEngine, **kwargs: Any) -> dspy.LM:
    """A real ``dspy.LM`` in front of ``engine`` (DSPy's retries: ``num_retries``, default 3, as dspy.LM has)."""
    return dspy.LM(model, engine=engine, **kwargs)


def every(n: int, fault: Fault, *, start: int = 0) -> Callable[[int, Prompt], Fault | None]:
    """A fault plan: ``fault`` on every ``n``-th request from ``start``."""
    return lambda index, prompt: fault if index >= start and (index - start) % n == 0 else None


def first_tries(n: int, fault: Fault) -> Callable[[int, Prompt], Fault | None]:
    """A fault plan: ``fault`` on the first arrival of every ``n``-th distinct request, never on its retries (as a
    rate limit that clears), whatever the order in which threads send them."""
    seen: set[tuple[Any, ...]] = set()
    lock = threading.Lock()

    def plan(index: int, prompt: Prompt) -> Fault | None:
        key = (prompt.system, prompt.turns, prompt.temperature)
        with lock:
            if key in seen:
                return None
            seen.add(key)
            return fault if len(seen) % n == 1 % n else None
    return plan


@contextmanager
def guarded_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM handlers that record the signal instead of interrupting or killing pytest (so a library
    that fails to install its own handlers fails a test, not the session); the old handlers come back after."""
    received: list[int] = []
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in saved:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
