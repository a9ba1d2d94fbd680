"""Argument helpers the commands share: seed ranges, comma-separated choices, counts."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"0,2,5"`` or ``"0-4,7"`` -> sorted seeds."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        seeds.update(range(int(low), int(high or low) + 1))
    return sorted(seeds)


def parse_list(text: str | None, known: Sequence[str], what: str) -> list[str]:
    """Comma-separated names out of ``known`` (all of them when ``text`` is empty); an unknown one stops the run."""
    if not text:
        return list(known)
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(known)}")
    return chosen


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive(text: str) -> int:
    """An argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value
