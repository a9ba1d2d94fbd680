"""What every benchmark result records about the code it measured: the library revision and package versions,
and, for the real-task comparison, the command, date and machine."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .paths import REPOSITORY


def library_revision() -> str:
    """Git short hash of the imported ``dspy_concept_distill``, ``+dirty`` when its folder has local changes
    (then the changed files, e.g. ``abc1234+dirty(testing.py)``)."""
    import dspy_concept_distill

    folder = Path(dspy_concept_distill.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=folder, capture_output=True,
                               text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not dirty:
        return head
    changed = sorted({Path(line[3:].split(" -> ")[-1]).name for line in dirty})
    return f"{head}+dirty({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})"


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` ("not installed" for missing ones)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except Exception:  # not installed: report it rather than fail
            out[name] = "not installed"
    return out


def revision(root: Path = REPOSITORY) -> str:
    """``git rev-parse --short HEAD``, plus ``+dirty`` when tracked files of the library or benchmarks changed."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "dspy_concept_distill", "benchmarks"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def metadata(command: str, *, revision_at_start: str | None = None, **extra: Any) -> dict[str, Any]:
    """Where and how a result was made (``revision_at_start``: the revision read when the run began)."""
    return {"command": command, "revision": revision_at_start or revision(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            **extra}
