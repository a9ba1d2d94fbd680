"""How text a teacher wrote is quoted in reasons and reports: one line, clipped, so one garbage reply cannot flood
the output."""

from __future__ import annotations

from typing import Any

CLIP_CHARS = 60


def clip_text(text: Any, limit: int = CLIP_CHARS) -> str:
    """Teacher text as quoted in a reason or a report: one line, at most ``limit`` characters and an ellipsis."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit].rstrip() + "…"
