"""How often each preset keeps every helpful concept and no harmful rule when the student is noisy.

    python benchmarks/noise_robustness.py --flip-rate 0.1 --seeds 0 1 2 3 4 5 [--out runs/noise_robustness.json]

A slice of the task family (benchmarks/family.py, whose ``today-noisy`` task is this at flip rate 0.1): today's
simulated world (scripted student and teacher, not real models), where with ``flip_rate`` > 0 every new prompt
flips that share of the student's answers (a deterministic hash of prompt and question), as prompt sensitivity does.
A concept counts as kept when its key phrase is in the final instructions (a kept paraphrase counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

from bench_meta import library_revision, package_versions
from family import run_one
from family_tasks import TASKS_BY_NAME


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flip-rate", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--presets", nargs="+", default=["light", "medium"])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "runs" / "noise_robustness.json"),
                        help="JSON rows (default untracked; benchmarks/results/ changes only when named here)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = [run_once(auto, seed, args.flip_rate) for auto in args.presets for seed in args.seeds]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + shlex.join(sys.argv), "library_revision": library_revision(),
            "versions": package_versions("dspy"), "flip_rate": args.flip_rate, "seeds": args.seeds}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"flip rate {args.flip_rate}, seeds {args.seeds}")
    print("| preset | all concepts kept | harmful kept | student calls | oracle accuracy (mean) |")
    print("|---|---|---|---|---|")
    for auto in args.presets:
        mine = [r for r in rows if r["auto"] == auto and r["status"] == "ok"]
        full = sum(r["concepts_kept"] == r["concepts"] for r in mine)
        calls = [r["student_calls"] for r in mine]
        oracle = sum(r["oracle_accuracy"] for r in mine) / max(1, len(mine))
        print(f"| {auto} | {full}/{len(mine)} | {sum(r['harmful_kept'] for r in mine)} | "
              f"{min(calls, default=0)}-{max(calls, default=0)} | {oracle:.3f} |")


if __name__ == "__main__":
    main()
