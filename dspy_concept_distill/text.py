"""How text a teacher wrote is quoted in reasons and reports (one line, clipped, so one garbage reply cannot flood
the output), and how a score is shown."""

from __future__ import annotations

from typing import Any

CLIP_CHARS = 60


def clip_text(text: Any, limit: int = CLIP_CHARS) -> str:
    """Teacher text as quoted in a reason or a report: one line, at most ``limit`` characters and an ellipsis."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit].rstrip() + "…"


def fmt_score(score: float | None) -> str:
    """A mean score as logs and reports show it: three decimals, "n/a" when it was not measured."""
    return "n/a" if score is None else f"{score:.3f}"
