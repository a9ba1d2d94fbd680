"""Helpers shared by test modules in several folders (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository's root: pyproject.toml, README.md, docs/, benchmarks/
