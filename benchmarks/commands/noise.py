"""How often each preset keeps every helpful concept and no harmful rule when the student is noisy.

    python -m benchmarks noise --flip-rate 0.1 --seeds 0 1 2 3 4 5 [--out benchmarks/results/noise_robustness.json]

A slice of the task family (``python -m benchmarks family``, whose ``today-noisy`` task is this at flip rate 0.1):
today's simulated world (scripted student and teacher, not real models), where with ``flip_rate`` > 0 every new
prompt flips that share of the student's answers (a deterministic hash of prompt and question), as prompt
sensitivity does. A concept counts as kept when its key phrase is in the final instructions (a kept paraphrase
counts).
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported: offline price table
os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no progress bars in the runs

import argparse
import logging
from pathlib import Path

from ..harness.paths import shown
from ..harness.simulated import noise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flip-rate", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--presets", nargs="+", default=["light", "medium"])
    parser.add_argument("--out", type=Path, default=noise.DEFAULT_OUT,
                        help=f"JSON rows (default {shown(noise.DEFAULT_OUT)}, untracked; benchmarks/results/ changes "
                             "only when named here)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    rows = noise.measure(args.presets, args.seeds, args.flip_rate, command=args.command_line, out=args.out)
    print(noise.table(rows, args.presets, args.seeds, args.flip_rate))
    return 0
