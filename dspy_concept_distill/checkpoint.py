"""Run state on disk: every scored (variant, example) pair and every teacher reply, so a stopped or failed
compile can be run again and resume without paying for finished work."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .evaluation import Outcome
from .induction import BatchReply

logger = logging.getLogger(__name__)

STATE_FILE = "concept_distillation_state.json"
STATE_VERSION = 1


class Checkpoint:
    """Reads and writes ``<directory>/concept_distillation_state.json``; a state from a different setup
    (other program, data, LMs or settings: another ``fingerprint``) is ignored with a warning."""

    def __init__(self, directory: str | os.PathLike[str] | None, fingerprint: str) -> None:
        self.path = Path(directory) / STATE_FILE if directory is not None else None
        self.fingerprint = fingerprint

    def load(self) -> tuple[dict[tuple[str, str], Outcome], dict[tuple[int, int], BatchReply]]:
        if self.path is None or not self.path.exists():
            return {}, {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable checkpoint %s: %s", self.path, exc)
            return {}, {}
        if data.get("version") != STATE_VERSION or data.get("fingerprint") != self.fingerprint:
            logger.warning("checkpoint %s is from a different program, data or settings; starting afresh", self.path)
            return {}, {}
        cache = {tuple(k.split("|", 1)): Outcome.from_dict(v) for k, v in data.get("cache", {}).items()}
        replies = {(r["round"], r["batch"]): BatchReply(**r) for r in data.get("replies", [])}
        logger.info("resuming from %s: %d scored runs, %d teacher replies", self.path, len(cache), len(replies))
        return cache, replies  # type: ignore[return-value]

    def save(self, cache: dict[tuple[str, str], Outcome], replies: list[BatchReply], extra: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "cache": {f"{v}|{e}": o.to_dict() for (v, e), o in list(cache.items())},
            "replies": [asdict(r) for r in replies if r.error is None],
            **extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, default=str)
        os.replace(tmp, self.path)  # atomic: a crash mid-write never leaves a torn state file
