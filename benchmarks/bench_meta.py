"""What every benchmark result records about the code it measured: the library revision and package versions."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path


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
