"""How often each preset keeps every helpful concept and no harmful rule when the student is noisy.

    python benchmarks/noise_robustness.py --flip-rate 0.1 --seeds 0 1 2 3 4 5

Simulated world (scripted student and teacher, not real models): with ``flip_rate`` > 0 every new prompt flips
that share of the student's answers (a deterministic hash of prompt and question), as prompt sensitivity does.
A concept counts as kept when its key phrase is in the final instructions (a kept paraphrase counts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

import dspy

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.testing import SimulatedTask


def run_once(auto: str, seed: int, flip_rate: float) -> dict:
    task = SimulatedTask.create(20, 20, seed=seed, flip_rate=flip_rate)
    world = task.world
    student, teacher = world.student_lm(cache=False), world.teacher_lm(cache=False)
    dspy.configure(lm=student, adapter=dspy.ChatAdapter())
    started = time.monotonic()
    optimized = ConceptDistillation(metric=world.metric, teacher_lm=teacher, auto=auto, seed=seed).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=task.trainset, valset=task.valset)
    instructions = " ".join(optimized.predict.signature.instructions.lower().split())
    result = optimized.distillation
    return {
        "auto": auto, "seed": seed, "flip_rate": flip_rate, "student_calls": student.engine.calls,
        "teacher_calls": teacher.engine.calls, "baseline": result.baseline_score, "final": result.final_score,
        "concepts_kept": sum(c.phrase.lower() in instructions for c in world.concepts),
        "concepts": len(world.concepts),
        "harmful_kept": sum(d.phrase.lower() in instructions for d in world.distractors if d.kind == "harmful"),
        "seconds": round(time.monotonic() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flip-rate", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--presets", nargs="+", default=["light", "medium"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "noise_robustness.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    rows = [run_once(auto, seed, args.flip_rate) for auto in args.presets for seed in args.seeds]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"flip rate {args.flip_rate}, seeds {args.seeds}")
    print("| preset | all concepts kept | harmful kept | student calls | valset before -> after |")
    print("|---|---|---|---|---|")
    for auto in args.presets:
        mine = [r for r in rows if r["auto"] == auto]
        full = sum(r["concepts_kept"] == r["concepts"] for r in mine)
        calls = [r["student_calls"] for r in mine]
        before = sum(r["baseline"] for r in mine) / len(mine)
        after = sum(r["final"] for r in mine) / len(mine)
        print(f"| {auto} | {full}/{len(mine)} | {sum(r['harmful_kept'] for r in mine)} | "
              f"{min(calls)}-{max(calls)} | {before:.2f} -> {after:.2f} |")


if __name__ == "__main__":
    main()
