"""Run state on disk, written as it happens: every scored (variant, example) pair and every teacher reply is one
line of an append-only JSON Lines journal, handed to the operating system at once (so it survives the process being
killed) and synced to disk after each teacher reply and at least every ``SYNC_SECONDS`` (so it survives the machine
going down). A compile killed at any point and started again with the same setup repeats no finished request.

The journal's first line holds a fingerprint of the setup (see ``fingerprint``). A journal from another setup,
or one that is not a journal of this version, is ignored with a warning (naming what changed) and replaced; a
malformed record in a matching journal is skipped with a warning, and a torn last line (the process died while
writing it) is dropped before the journal is appended to.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..records import BatchReply, ErrorKind, Outcome
from ..runtime.evaluator import EvalCache
from ..runtime.logs import folded_warnings, warn_folded
from .fingerprint import changed_parts, code_identity, fingerprint, lm_identity

__all__ = ["Journal", "Resumed", "attach", "code_identity", "fingerprint", "lm_identity"]

logger = logging.getLogger(__name__)

STATE_VERSION = 3
SYNC_SECONDS = 1.0  # scored runs reach the disk at least this often; teacher replies at once


@dataclass
class Resumed:
    """What a journal held for this setup."""

    outcomes: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[tuple[int, int], BatchReply] = field(default_factory=dict)


class Journal:
    """``<directory>/<name>.jsonl``; ``directory=None`` keeps nothing."""

    def __init__(self, directory: str | os.PathLike[str] | None, name: str, fingerprint: str) -> None:
        self.path = Path(directory) / f"{name}.jsonl" if directory is not None else None
        self.fingerprint = fingerprint
        self._handle: TextIO | None = None
        self._synced = time.monotonic()
        self._lock = threading.Lock()

    def check_writable(self) -> None:
        """Raise a clear error now, before any LM call, if the directory cannot hold the journal."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe = self.path.parent / f".{self.path.name}.probe"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except OSError as exc:
            raise ValueError(f"checkpoint_dir {str(self.path.parent)!r} is not writable: {exc}") from exc

    def load(self) -> Resumed:
        """The records of a journal from this setup; anything else is ignored with a warning (one line per kind)."""
        if self.path is None or not self.path.exists():
            return Resumed()
        with folded_warnings():
            return self._load(self.path)

    def _load(self, path: Path) -> Resumed:
        try:
            lines = path.read_bytes().decode("utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("ignoring unreadable checkpoint %s (%s); starting afresh", self.path, exc)
            return Resumed()
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last record
        records = _parse_lines(lines, path)
        header = records[0] if records and records[0][0] == 1 else (0, {})
        if not self._matches(header[1]):
            return Resumed()
        resumed = Resumed()
        for number, record in records[1:]:
            try:
                _read_record(record, resumed)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                warn_folded(logger, "malformed record", "ignoring a malformed record on line %d of checkpoint %s: %s",
                            number, self.path, exc)
        logger.info("resuming from %s: %d scored runs and %d teacher replies (rounds %s) will not be paid for again",
                    self.path, len(resumed.outcomes), len(resumed.replies),
                    sorted({r + 1 for r, _ in resumed.replies}) or "none")
        return resumed

    def _matches(self, header: dict[str, Any]) -> bool:
        if header.get("type") != "header" or header.get("version") != STATE_VERSION:
            logger.warning("ignoring checkpoint %s: not a state file of this version; starting afresh", self.path)
            return False
        if header.get("fingerprint") != self.fingerprint:
            parts = getattr(self.fingerprint, "parts", None)
            what = ", ".join(changed_parts(header.get("parts"), parts)) if parts else "the setup"
            logger.warning("ignoring checkpoint %s: it was written for another setup (changed: %s); starting afresh",
                           self.path, what)
            return False
        return True

    def open(self, resumed: Resumed) -> None:
        """Start writing: append to a journal from this setup, or start a new one."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not resumed.outcomes and not resumed.replies
        if not fresh:
            _drop_torn_tail(self.path)
        self._handle = self.path.open("w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._write({"type": "header", "version": STATE_VERSION, "fingerprint": str(self.fingerprint),
                         "parts": getattr(self.fingerprint, "parts", None)}, sync=True)

    def outcome(self, key: tuple[str, str], outcome: Outcome) -> None:
        self._write({"type": "outcome", "variant": key[0], "example": key[1], "outcome": outcome.to_dict()})

    def reply(self, reply: BatchReply) -> None:
        """Journal a teacher reply, a failed one too (a resume would get the same unusable reply), unless the
        teacher LM itself failed (``transient``): that batch is asked again on resume."""
        if not reply.transient:
            self._write({"type": "reply", **reply.to_dict()}, sync=True)

    def sync(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
                self._handle.close()
                self._handle = None

    def _write(self, record: dict[str, Any], *, sync: bool = False) -> None:
        with self._lock:
            if self._handle is None:
                return
            self._handle.write(json.dumps(record, default=str) + "\n")
            self._handle.flush()  # in the kernel now: survives the process being killed
            if sync or time.monotonic() - self._synced > SYNC_SECONDS:
                os.fsync(self._handle.fileno())  # on disk: survives the machine going down
                self._synced = time.monotonic()


def _parse_lines(lines: list[str], path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every line that holds a JSON object; other lines are skipped with a warning, except
    a torn last line (the process died while writing it), which is skipped quietly."""
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                warn_folded(logger, "unreadable line", "ignoring unreadable line %d of checkpoint %s", number, path)
            continue
        if isinstance(record, dict):
            records.append((number, record))
        else:
            warn_folded(logger, "not a record", "ignoring line %d of checkpoint %s: not a record", number, path)
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a record torn by a crash), so the next record starts on its own line."""
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def _read_record(record: dict[str, Any], resumed: Resumed) -> None:
    kind = record.get("type")
    if kind == "outcome":
        _check_str(record["variant"], "variant")
        _check_str(record["example"], "example")
        checked_outcome(record["outcome"])
        resumed.outcomes.append(record)
    elif kind == "reply":
        reply = checked_reply({k: v for k, v in record.items() if k != "type"})
        resumed.replies[(reply.round, reply.batch)] = reply
    else:
        raise ValueError(f"unknown record type {kind!r}")


def checked_outcome(data: Any) -> Outcome:
    """An ``Outcome`` from saved data, every field of the type the code relies on (else ``ValueError``)."""
    if not isinstance(data, dict):
        raise TypeError(f"an outcome is an object, got {type(data).__name__}")
    outcome = Outcome.from_dict(data)
    if isinstance(outcome.score, bool) or not math.isfinite(outcome.score):
        raise ValueError(f"an outcome needs a finite score, got {outcome.score!r}")
    for name in ("feedback", "error", "raw_text", "failed_predictor"):
        _check_str(getattr(outcome, name), name, optional=True)
    _check_int(outcome.calls, "calls")  # the steps' shape is checked by Outcome.from_dict
    if outcome.error_kind is not None and not isinstance(outcome.error_kind, ErrorKind):
        raise ValueError(f"unknown error kind {outcome.error_kind!r}")
    return outcome


def checked_reply(data: dict[str, Any]) -> BatchReply:
    """A ``BatchReply`` from saved data, every field of the type the code relies on (else ``ValueError``)."""
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise ValueError("rules must be a list")
    for rule in rules:
        if not isinstance(rule, dict) or not isinstance(rule.get("rule", ""), str):
            raise ValueError("each rule must be an object with a text 'rule'")
        _check_str(rule.get("predictor"), "predictor", optional=True)
        mistakes = rule.get("mistakes", [])
        if mistakes is not None and not isinstance(mistakes, list):
            raise ValueError("a rule's mistakes must be a list")
    reply = BatchReply.from_dict(data)
    for name in ("round", "batch", "attempts"):
        _check_int(getattr(reply, name), name)
    if not isinstance(reply.transient, bool):
        raise ValueError("transient must be true or false")
    for name in ("mistake_ids", "diagnoses"):
        value = getattr(reply, name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
    _check_str(reply.error, "error", optional=True)
    return reply


def _check_str(value: Any, name: str, *, optional: bool = False) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")


def _check_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


def attach(journal: Journal, cache: EvalCache) -> Resumed:
    """Load the journal into ``cache`` and record every new outcome from now on."""
    resumed = journal.load()
    cache.load(resumed.outcomes)
    journal.open(resumed)
    cache.on_put = journal.outcome
    return resumed
