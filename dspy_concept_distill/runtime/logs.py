"""How this package logs, fitted to DSPy: its logger is set up as DSPy sets up its own (INFO and above to stderr in
DSPy's format, through DSPy's stream, so ``dspy.disable_logging()`` silences it too; not passed on to the root
logger, so a ``logging.basicConfig`` does not print each line twice). Repeated warnings of one kind are folded into
one line with a count, and messages are one line, clipped at a word."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PACKAGE = "dspy_concept_distill"


def configure_logging() -> None:
    """Give the package logger DSPy's handler, level and format, as ``import dspy`` does for ``dspy``'s loggers.

    A user's own configuration still rules: ``logging.getLogger("dspy_concept_distill").setLevel(logging.WARNING)``
    quiets it, ``.propagate = True`` hands its lines to the root logger's handlers as well."""
    from dspy.utils.logging_utils import configure_dspy_loggers

    configure_dspy_loggers(PACKAGE)
    for handler in logging.getLogger(PACKAGE).handlers:
        if handler.get_name() == "dspy_handler" and not any(isinstance(f, OneLine) for f in handler.filters):
            handler.addFilter(OneLine())


class OneLine(logging.Filter):
    """Every message on one line (an exception text over several lines, say), clipped at a word when very long."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\n" in message or len(message) > MAX_LINE:
            record.msg, record.args = one_line(message, MAX_LINE), ()
        return True


MAX_LINE = 2000  # characters of one log message


def one_line(text: Any, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs become one space), at most ``limit`` characters, clipped at a word
    boundary with an ellipsis, never mid-word."""
    line = " ".join(str(text).split())
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] if " " in line[:limit] else line[:limit]
    return cut.rstrip(" ,;:") + " …"


class _Folder:
    """Warnings collected while a ``folded_warnings`` block runs: the first message of each kind and a count."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {}  # kind -> [logger, first message, count]
        self.lock = threading.Lock()

    def add(self, logger: logging.Logger, kind: str, message: str) -> None:
        with self.lock:
            if kind in self.seen:
                self.seen[kind][2] += 1
            else:
                self.seen[kind] = [logger, message, 1]

    def flush(self) -> None:
        for logger, message, count in self.seen.values():
            logger.warning("%s", message if count == 1 else f"{message} [{count} times]")


_FOLDER: contextvars.ContextVar[_Folder | None] = contextvars.ContextVar("dspy_concept_distill_folder", default=None)


@contextmanager
def folded_warnings() -> Iterator[None]:
    """Within the block (and the jobs it runs through the package's executor, which copies the context), warnings
    given to ``warn_folded`` are collected; at its end each kind is logged once, with how many times it came up."""
    folder = _Folder()
    token = _FOLDER.set(folder)
    try:
        yield
    finally:
        _FOLDER.reset(token)
        folder.flush()


def warn_folded(logger: logging.Logger, kind: str, message: str, *args: Any) -> None:
    """A warning that may come up many times in a row (one per teacher reply, say): folded into one line with a
    count inside a ``folded_warnings`` block, logged at once outside one."""
    folder = _FOLDER.get()
    if folder is None:
        logger.warning(message, *args)
    else:
        folder.add(logger, kind, message % args if args else message)
