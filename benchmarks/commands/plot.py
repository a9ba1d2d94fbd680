"""Redraw the PNG plot of a real-task comparison (``python -m benchmarks run --optimizers ...``) from its CSV:

    python -m benchmarks plot benchmarks/results/local/real_reviews.csv

The PNG goes next to the CSV (same name, .png)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.real.report import plot, read_csv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", type=Path)
    parser.add_argument("--title", help="plot title (default: the title recorded in the CSV)")


def run(args: argparse.Namespace) -> int:
    meta, rows = read_csv(args.csv)
    title = args.title or meta.get("title") or args.csv.stem
    ok = plot(rows, args.csv.with_suffix(".png"), meta, title=title)
    print(f"wrote {args.csv.with_suffix('.png')}" if ok else "matplotlib is not installed")
    return 0 if ok else 1
