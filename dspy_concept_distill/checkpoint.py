"""Run state on disk, written as it happens: every scored (variant, example) pair and every teacher reply is one
line of an append-only JSON Lines journal, flushed at once (and synced to disk after each teacher reply and each
evaluation batch). A compile killed at any point and started again with the same setup repeats no finished request.

The journal's first line holds a fingerprint of the setup: program (instructions and field types), data, metric
code, student and teacher LMs (identity and settings) and parameters. A journal from another setup is ignored
with a warning and replaced.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy

from .evaluation import EvalCache, Outcome, example_key
from .induction import BatchReply

logger = logging.getLogger(__name__)

STATE_VERSION = 2


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
        self._handle = None
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
        """The records of a journal from this setup; anything else is ignored with a warning."""
        if self.path is None or not self.path.exists():
            return Resumed()
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            logger.warning("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return Resumed()
        records = _parse_lines(lines, self.path)
        header = records[0] if records else {}
        if header.get("type") != "header" or header.get("version") != STATE_VERSION:
            logger.warning("ignoring checkpoint %s: not a state file of this version; starting afresh", self.path)
            return Resumed()
        if header.get("fingerprint") != self.fingerprint:
            logger.warning("ignoring checkpoint %s: it is from a different program, data, metric, LMs or settings; "
                           "starting afresh", self.path)
            return Resumed()
        resumed = Resumed()
        for record in records[1:]:
            try:
                if record.get("type") == "outcome":
                    Outcome.from_dict(record["outcome"])  # validate before trusting it
                    resumed.outcomes.append(record)
                elif record.get("type") == "reply":
                    reply = BatchReply(**{k: v for k, v in record.items() if k != "type"})
                    resumed.replies[(reply.round, reply.batch)] = reply
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("ignoring a malformed record in checkpoint %s: %s", self.path, exc)
        logger.info("resuming from %s: %d scored runs and %d teacher replies will not be paid for again",
                    self.path, len(resumed.outcomes), len(resumed.replies))
        return resumed

    def open(self, resumed: Resumed) -> None:
        """Start writing: append to a journal from this setup, or start a new one."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not resumed.outcomes and not resumed.replies
        self._handle = self.path.open("w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._write({"type": "header", "version": STATE_VERSION, "fingerprint": self.fingerprint}, sync=True)

    def outcome(self, key: tuple[str, str], outcome: Outcome) -> None:
        self._write({"type": "outcome", "variant": key[0], "example": key[1], "outcome": outcome.to_dict()})

    def reply(self, reply: BatchReply) -> None:
        if reply.error is None:
            self._write({"type": "reply", **asdict(reply)}, sync=True)

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
            if sync:
                os.fsync(self._handle.fileno())


def _parse_lines(lines: list[str], path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                logger.warning("ignoring unreadable line %d of checkpoint %s", number, path)
            continue  # a torn last line: the process died while writing it
        if isinstance(record, dict):
            records.append(record)
    return records


def attach(journal: Journal, cache: EvalCache) -> Resumed:
    """Load the journal into ``cache`` and record every new outcome from now on."""
    resumed = journal.load()
    cache.load(resumed.outcomes)
    journal.open(resumed)
    cache.on_put = journal.outcome
    return resumed


# -- fingerprint ----------------------------------------------------------------------------------------------------
def fingerprint(program: dspy.Module, base_instructions: dict[str, str], trainset: Sequence[dspy.Example],
                valset: Sequence[dspy.Example], metric: Callable[..., Any], teacher_lm: Any,
                params: dict[str, Any]) -> str:
    default_lm = dspy.settings.lm
    payload = {
        "program": {name: {"instructions": base_instructions[name], "fields": _fields(p.signature),
                           "lm": lm_identity(p.lm or default_lm)} for name, p in program.named_predictors()},
        "train": [example_key(e) for e in trainset], "val": [example_key(e) for e in valset],
        "metric": code_identity(metric), "teacher": lm_identity(teacher_lm),
        "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _fields(signature: Any) -> dict[str, str]:
    return {f"{kind}:{name}": str(info.annotation)
            for kind, fields_ in (("in", signature.input_fields), ("out", signature.output_fields))
            for name, info in fields_.items()}


_COUNTERS = frozenset({"calls", "call_count", "requests", "sampled_calls"})


def _primitives(obj: Any) -> dict[str, Any]:
    """An engine's plain settings (model path, seed, ...): public str/number attributes, call counters left out.
    An engine can say what identifies it instead with an ``identity()`` method."""
    identity = getattr(obj, "identity", None)
    if callable(identity):
        return {"identity": identity()}
    try:
        items = sorted(vars(obj).items())
    except TypeError:
        return {}
    return {k: v for k, v in items if not k.startswith("_") and k not in _COUNTERS
            and isinstance(v, (str, int, float, bool, type(None)))}


def lm_identity(lm: Any) -> dict[str, Any]:
    """What makes an LM's replies what they are: class, model, request settings and a custom engine's settings."""
    if lm is None:
        return {}
    identity: dict[str, Any] = {"class": _qualname(type(lm)), "model": getattr(lm, "model", None),
                                "kwargs": {k: v for k, v in sorted((getattr(lm, "kwargs", None) or {}).items())
                                           if isinstance(v, (str, int, float, bool, type(None)))}}
    engine = getattr(lm, "engine", None)
    if engine is not None and not isinstance(engine, str):
        identity["engine"] = {"class": _qualname(type(engine)), **_primitives(engine)}
    return identity


def code_identity(fn: Any) -> str:
    """A hash of a callable's code: its source when available, else its bytecode and constants."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        code = getattr(getattr(fn, "__func__", fn), "__code__", None)
        text = f"{code.co_code.hex()}|{code.co_consts!r}" if code is not None else _qualname(target)
    return hashlib.sha256(text.encode()).hexdigest()


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
