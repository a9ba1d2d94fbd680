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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StopRequestedError

logger = logging.getLogger(__name__)

T = TypeVar("T")
STOP_FILE = "STOP"


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


class _Pool:
    """A fixed set of worker threads that take urgent jobs before the others, each in submission order."""

    def __init__(self, num_threads: int, prefix: str) -> None:
        self._ready = threading.Condition()
        self._queues: tuple[deque, deque] = (deque(), deque())  # urgent, normal: (future, job)
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{prefix}_{i}", daemon=True)
                         for i in range(num_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], T], *, urgent: bool) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot submit a job after the executor was closed")
            self._queues[0 if urgent else 1].append((future, job))
            self._ready.notify()
        return future

    def _work(self) -> None:
        _block_stop_signals()
        while True:
            with self._ready:
                while not (self._queues[0] or self._queues[1] or self._closed):
                    self._ready.wait()
                queue = self._queues[0] or self._queues[1]
                if not queue:
                    return  # closed, nothing left
                future, job = queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = job()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Cancel the jobs not started and wait for those running."""
        with self._ready:
            self._closed = True
            for queue in self._queues:
                while queue:
                    queue.popleft()[0].cancel()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()


class Executor:
    """A thread pool for one compile; ``close()`` waits for the jobs in flight.

    Jobs submitted with ``urgent=True`` start before every job still waiting: the teacher's, so it never queues
    behind the valset baseline, which runs while it writes rules, and the racing chunk in front, so it never queues
    behind work raced ahead."""

    def __init__(self, num_threads: int) -> None:
        self.num_threads = max(1, int(num_threads))
        self._pool = _Pool(self.num_threads, "cd") if self.num_threads > 1 else None

    def submit(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> Future[T]:
        if self._pool is None:
            future: Future[T] = Future()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        context = contextvars.copy_context()
        return self._pool.submit(partial(context.run, fn, *args), urgent=urgent)

    def map(self, fn: Callable[[Any], T], items: Iterable[Any], *, urgent: bool = False) -> list[T]:
        """``fn`` on every item, in parallel; results in input order. Exceptions propagate after all finished."""
        futures = [self.submit(fn, item, urgent=urgent) for item in items]
        results: list[Any] = []  # a None in place of each failed job, then raised before they are returned
        first_error: BaseException | None = None
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
            self._pool.shutdown()
