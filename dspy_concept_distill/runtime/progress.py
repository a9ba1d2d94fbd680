"""Progress display: a tqdm bar on a terminal; elsewhere (logs, CI, notebooks writing to files) one log line when a
step finishes instead of a line per refresh."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger("dspy_concept_distill.progress")
package_logger = logging.getLogger("dspy_concept_distill")


class _LoggedProgress:
    """tqdm's small interface (update, set_postfix, close, context manager) that logs once, at the end."""

    def __init__(self, total: int, desc: str | None) -> None:
        self.total, self.desc, self.n = total, desc or "progress", 0
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.total:
            extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
            logger.info("%s: %d/%d done%s", self.desc, self.n, self.total, extra)
        self.total = 0

    def __enter__(self) -> _LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int, desc: str | None = None, leave: bool = False) -> Any:
    """A progress bar for ``total`` steps: tqdm when stderr is a terminal, a single log line otherwise."""
    if getattr(sys.stderr, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, leave=leave)
    return _LoggedProgress(total, desc)


@contextmanager
def verbose_logging(on: bool) -> Iterator[None]:
    """With ``verbose=True``, the package logs at DEBUG for the block (each teacher attempt, what the run closed
    with, ...), through the handler it always has (see ``logs.configure_logging``): no second handler, so no line is
    printed twice."""
    if not on:
        yield
        return
    previous = package_logger.level
    package_logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        package_logger.setLevel(previous)
