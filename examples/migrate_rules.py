"""Workload migration: re-check rules learned for one student before giving them to another.

Rules are plain text, so a rule set exported after one compile can be applied to another program or another
student. Whether each rule still helps is an empirical question: `ConceptDistillation.verify` races every rule
on the new student's valset, on top of those kept before it, with no teacher calls.

    python examples/quickstart.py                     # writes runs/quickstart/rules.json
    CD_STUDENT=ollama_chat/llama3.2:1b python examples/migrate_rules.py runs/quickstart/rules.json
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import dspy

from dspy_concept_distill import ConceptDistillation, RuleSet

DATA = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "reviews.jsonl"


def sentiment_matches(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> bool:
    return str(prediction.sentiment).strip().lower().strip(".!") == example.sentiment


def main(rules_path: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("dspy_concept_distill").setLevel(logging.INFO)
    rules = RuleSet.from_json(rules_path)  # or RuleSet.from_markdown("rules.md")

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    valset = [dspy.Example(review=r["review"], sentiment=r["sentiment"]).with_inputs("review") for r in rows[24:]]

    spec = os.environ.get("CD_STUDENT", "local")
    if spec == "local":
        from dspy_concept_distill.lms import local_lm

        student = local_lm(max_tokens=64)
    else:
        student = dspy.LM(spec, max_tokens=64)
    dspy.configure(lm=student, adapter=dspy.JSONAdapter())

    program = dspy.Predict("review -> sentiment")
    print(f"{len(rules)} rule(s) as they are:\n" + rules.apply(program).signature.instructions + "\n")

    # verify() needs no teacher calls, but the optimizer is built the usual way.
    optimizer = ConceptDistillation(metric=sentiment_matches, teacher_lm=student, seed=0)
    rechecked = optimizer.verify(program, rules, valset=valset)
    print(rechecked.distillation.summary())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RULES.json")
    main(sys.argv[1])
