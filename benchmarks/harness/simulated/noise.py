"""How often each preset keeps every helpful concept and no harmful rule when the student is noisy
(``python -m benchmarks noise``).

A slice of the task family (``family.py``, whose ``today-noisy`` task is this at flip rate 0.1): today's simulated
world (scripted student and teacher, not real models), where with ``flip_rate`` > 0 every new prompt flips that
share of the student's answers (a deterministic hash of prompt and question), as prompt sensitivity does. A concept
counts as kept when its key phrase is in the final instructions (a kept paraphrase counts).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..paths import LOCAL_RESULTS
from ..provenance import library_revision, package_versions
from .family import run_one
from .tasks import TASKS_BY_NAME

DEFAULT_OUT = LOCAL_RESULTS / "noise_robustness.json"


def run_once(auto: str, seed: int, flip_rate: float) -> dict:
    task = dataclasses.replace(TASKS_BY_NAME["today"], name=f"today-flip-{flip_rate:g}", flip_rate=flip_rate)
    record = run_one(task, f"cd-{auto}", seed)
    return {
        "auto": auto, "seed": seed, "flip_rate": flip_rate, "status": record.status, "error": record.error,
        "student_calls": record.student_calls, "teacher_calls": record.helper_calls,
        "oracle_accuracy": record.oracle_accuracy, "test_accuracy": record.test_accuracy,
        "concepts_kept": len(record.helpful_in_force), "concepts": record.pool_helpful,
        "harmful_kept": len(record.harmful_in_force), "seconds": record.wall_seconds,
    }


def measure(presets: Sequence[str], seeds: Sequence[int], flip_rate: float, *, command: str,
            out: Path) -> list[dict[str, Any]]:
    """Every preset on every seed; the rows are written to ``out`` (JSON, with ``command`` recorded) and
    returned."""
    rows = [run_once(auto, seed, flip_rate) for auto in presets for seed in seeds]
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "library_revision": library_revision(),
            "versions": package_versions("dspy"), "flip_rate": flip_rate, "seeds": list(seeds)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return rows


def table(rows: Sequence[dict[str, Any]], presets: Sequence[str], seeds: Sequence[int], flip_rate: float) -> str:
    """The terminal table: per preset, runs that kept every concept, harmful rules kept, calls, oracle accuracy."""
    lines = [f"flip rate {flip_rate}, seeds {list(seeds)}",
             "| preset | all concepts kept | harmful kept | student calls | oracle accuracy (mean) |",
             "|---|---|---|---|---|"]
    for auto in presets:
        mine = [r for r in rows if r["auto"] == auto and r["status"] == "ok"]
        full = sum(r["concepts_kept"] == r["concepts"] for r in mine)
        calls = [r["student_calls"] for r in mine]
        oracle = sum(r["oracle_accuracy"] for r in mine) / max(1, len(mine))
        lines.append(f"| {auto} | {full}/{len(mine)} | {sum(r['harmful_kept'] for r in mine)} | "
                     f"{min(calls, default=0)}-{max(calls, default=0)} | {oracle:.3f} |")
    return "\n".join(lines)
