"""Running work in parallel, and stopping a run cleanly.

``Executor`` runs jobs on a thread pool that never re-submits a running job (DSPy's ``Evaluate`` and
``ParallelExecutor`` re-submit stragglers after a timeout, which runs an LM request twice). Each job runs in a
copy of the submitting thread's context, so DSPy settings made with ``dspy.context`` (LM, adapter, trace, ...)
reach it. With one thread, jobs run in the calling thread, one after another.

``StopSignal`` turns Ctrl-C, SIGTERM or a stop file into a request to stop at the next safe point; the run then
returns what it verified so far. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextvars
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
STOP_FILE = "STOP"


class StopRequestedError(RuntimeError):
    """The user asked the run to stop (Ctrl-C, SIGTERM or a stop file)."""


class StopSignal:
    """A stop request from a signal or a file; ``check()`` raises ``StopRequestedError`` once one arrived."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.stop_file = stop_file
        self.reason: str | None = None
        self._event = threading.Event()

    def request(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()
            logger.warning("stop requested (%s): finishing the work in flight, then returning the rules verified "
                           "so far", reason)

    @property
    def requested(self) -> bool:
        if not self._event.is_set() and self.stop_file is not None and self.stop_file.exists():
            self.request(f"stop file {self.stop_file} found (removed, so the next run goes on)")
            self.stop_file.unlink(missing_ok=True)
        return self._event.is_set()

    def check(self) -> None:
        if self.requested:
            raise StopRequestedError(f"stopped on request: {self.reason}")

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        """Catch SIGINT and SIGTERM while the block runs (main thread only; elsewhere signals are left alone)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self._event.is_set():
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.request(signal.Signals(signum).name)

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, signal.SIG_DFL if old is None else old)


def _block_stop_signals() -> None:
    """Keep Ctrl-C and SIGTERM away from worker threads, so the kernel delivers them to the main thread: its wait
    on a job is then interrupted and the handler runs at once, instead of when that job happens to finish."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class Executor:
    """A thread pool for one compile; ``close()`` waits for the jobs in flight."""

    def __init__(self, num_threads: int) -> None:
        self.num_threads = max(1, int(num_threads))
        self._pool = (ThreadPoolExecutor(self.num_threads, thread_name_prefix="cd", initializer=_block_stop_signals)
                      if self.num_threads > 1 else None)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is None:
            future: Future[T] = Future()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        context = contextvars.copy_context()
        return self._pool.submit(context.run, fn, *args)

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """``fn`` on every item, in parallel; results in input order. Exceptions propagate after all finished."""
        futures = [self.submit(fn, item) for item in items]
        results, first_error = [], None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:
                first_error = first_error or exc
                results.append(None)
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
