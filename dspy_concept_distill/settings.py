"""The settings of a run: presets, the resolved ``RunSettings``, and the checks every parameter and input passes
before the first LM call."""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from .errors import BudgetTooSmallError
from .foreign import translate
from .records import Limits

logger = logging.getLogger(__name__)

MIN_VALSET_SIZE = 5
NO_TEACHER = (
    "ConceptDistillation needs a teacher_lm: the strong LM that writes the rules, e.g. "
    "teacher_lm=dspy.LM('openai/gpt-4o') (prompt_model=, reflection_lm= and teacher_settings=dict(lm=...) are read "
    "as teacher_lm). It does not fall back to the configured LM, which is usually the student: to let the student "
    "write its own rules, pass teacher_lm=dspy.settings.lm"
)


@dataclass(frozen=True)
class Preset:
    rounds: int
    num_batches: int
    max_candidates: int
    screen_size: int
    confidence_z: float  # the lower confidence bound that accepts a rule: mean gain - confidence_z * se
    futility_z: float  # optimism of the projection that drops a candidate before the end of the valset
    window: int  # candidates raced side by side
    final_z: float  # the returned rules' gain over the starting instructions must be shown at this confidence ...
    strict_z: float  # ... or at this one on the valset alone, when there is no budget to confirm it on fresh examples
    extend: bool  # a near miss on the valset goes on to trainset examples it was not written for
    hold: bool  # racing leaves a trainset pass of the budget for the confirmation of the returned rules
    train_passes: float  # student budget in program runs: runs per trainset example the student runs on ...
    val_passes: float  # ... plus runs per valset example raced (the held-back ones cost two runs each) ...
    predictor_runs: float  # ... plus this many per predictor beyond the first (placements, more candidates) ...
    base_runs: float  # ... plus this many
    passes_over_whole_valset: bool = False  # val_passes count every valset example, the held-back ones too


PRESETS: dict[str, Preset] = {
    # light: one round, rules raced one after another in the teacher's order over every valset example raced, the
    # returned rules checked strictly on the valset (or on the held-back half of a valset of 60 or more); at most
    # 0.75x COPRO (4, 2)'s program runs.
    "light": Preset(rounds=1, num_batches=5, max_candidates=12, screen_size=0, confidence_z=0.3, futility_z=3.0,
                    window=1, final_z=1.0, strict_z=1.5, extend=False, hold=False, train_passes=1, val_passes=5,
                    predictor_runs=300, base_runs=0, passes_over_whole_valset=True),
    # medium: two rounds, three candidates raced side by side, near misses extended to the trainset, the returned
    # rules confirmed on the held-back half (or strictly on the valset); at most 0.6x GEPA light's program runs.
    "medium": Preset(rounds=2, num_batches=8, max_candidates=16, screen_size=0, confidence_z=0.3, futility_z=3.0,
                     window=3, final_z=1.0, strict_z=1.5, extend=True, hold=False, train_passes=2, val_passes=3.2,
                     predictor_runs=200, base_runs=120),
    # heavy: medium with a third round and a larger budget (more valset passes, trainset passes and runs per extra
    # predictor): it buys most where the valset is large (scale-200: 0.756 against medium's 0.588).
    "heavy": Preset(rounds=3, num_batches=8, max_candidates=32, screen_size=0, confidence_z=0.3, futility_z=3.0,
                    window=3, final_z=1.0, strict_z=1.5, extend=True, hold=False, train_passes=3, val_passes=5,
                    predictor_runs=300, base_runs=200),
}


@dataclass(frozen=True)
class RunSettings:
    """The settings a run uses, presets resolved."""

    rounds: int
    num_batches: int
    mistakes_per_batch: int
    max_rules_per_batch: int
    max_candidates: int
    screen_size: int
    confidence_z: float
    futility_z: float
    window: int
    final_z: float
    strict_z: float
    extend: bool
    hold: bool
    train_sample: int  # the most trainset examples the student runs on to find mistakes
    min_gain: float | None
    metric_threshold: float | None
    teacher_retries: int
    num_threads: int
    seed: int


def validate_params(init: Callable[..., Any], values: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check every constructor argument (``values``: the constructor's locals) before anything is stored; other
    optimizers' parameters in ``kwargs`` are translated (see ``foreign``). Returns the values they give to ours."""
    parameters = {n: p.default for n, p in inspect.signature(init).parameters.items() if n not in {"self", "kwargs"}}
    given = {n: values[n] for n, default in parameters.items() if not _same(values.get(n), default)}
    overrides = translate(kwargs, where="ConceptDistillation()", known=parameters, given=given)
    v = {**values, **overrides}
    if v["metric"] is None:
        raise ValueError("ConceptDistillation needs a metric: metric(example, prediction) -> score")
    from .runtime.metric import MetricAdapter

    MetricAdapter(v["metric"])  # raises a clear TypeError for non-callables and unusable signatures
    if v["teacher_lm"] is None:
        raise ValueError(NO_TEACHER)
    if not isinstance(v["teacher_lm"], dspy.BaseLM):
        raise TypeError(f"teacher_lm must be a dspy.LM, got {type(v['teacher_lm']).__name__}")
    if v["auto"] is not None and v["auto"] not in PRESETS:
        raise ValueError(f"auto must be one of {sorted(PRESETS)} or None, got {v['auto']!r}")
    for name in ("rounds", "num_batches", "mistakes_per_batch", "max_rules_per_batch", "max_candidates",
                 "max_metric_calls", "max_tokens", "num_threads"):
        check_int(name, v[name], minimum=1)
    for name in ("screen_size", "teacher_retries", "max_student_calls", "max_teacher_calls"):
        check_int(name, v[name], minimum=0)
    check_int("seed", v["seed"], minimum=None)
    check_number("min_gain", v["min_gain"], minimum=0.0)
    check_number("max_cost_usd", v["max_cost_usd"], positive=True)
    check_number("metric_threshold", v["metric_threshold"])
    fraction = v["val_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction!r}")
    if v["max_metric_calls"] is not None and v["max_student_calls"] is not None:
        raise ValueError("give max_student_calls or max_metric_calls (GEPA's name for the same budget), not both")
    if v["on_failure"] not in ("raise", "return"):
        raise ValueError(f"on_failure must be 'raise' or 'return', got {v['on_failure']!r}")
    for name in ("ablation", "verbose"):
        if not isinstance(v[name], bool):
            raise ValueError(f"{name} must be True or False, got {v[name]!r}")
    for name in ("checkpoint_dir", "log_dir"):
        if v[name] is not None and not isinstance(v[name], (str, os.PathLike)):
            raise TypeError(f"{name} must be a path, got {type(v[name]).__name__}")
    return overrides


def _same(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def check_int(name: str, value: Any, minimum: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def check_number(name: str, value: Any, *, positive: bool = False, minimum: float | None = None) -> None:
    """A finite real number (bools refused), above 0 when ``positive``, at least ``minimum``; ``None`` passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum:g}, got {value!r}")


def check_run_budget(limits: Limits, n_train: int, n_val: int) -> None:
    """A student budget in program runs must pay for the runs every compile makes (the trainset and the valset
    baseline, once each) and leave some to race a candidate rule: refused before any LM call otherwise."""
    runs = limits.program_runs
    if runs is not None and runs <= n_train + n_val:
        raise BudgetTooSmallError(
            f"a student budget of {runs:g} program runs cannot pay for the runs every compile makes, the trainset "
            f"({n_train}) and the valset baseline ({n_val}), and leave any to race a candidate rule: give "
            f"max_metric_calls of at least {n_train + 2 * n_val} (one full race), or fewer examples"
        )


def check_program(student: Any) -> list[str]:
    if not isinstance(student, dspy.Module):
        raise TypeError(f"compile expects a dspy.Module as the student, got {type(student).__name__}")
    predictors = student.named_predictors()
    if not predictors:
        raise ValueError("the program has no predictors (dspy.Predict, dspy.ChainOfThought, ...) to optimize")
    missing_lm = [name for name, p in predictors if p.lm is None and dspy.settings.lm is None]
    if missing_lm:
        raise ValueError(f"no student LM for predictors {missing_lm}: call dspy.configure(lm=...) or set predictor.lm")
    return [name for name, _ in predictors]


def materialize(name: str, examples: Any) -> list[dspy.Example]:
    """A list from any iterable of examples (a generator included); a clear error for anything else."""
    if isinstance(examples, (str, bytes, dict, dspy.Example)) or not isinstance(examples, Iterable):
        raise TypeError(f"{name} must be a list (or other iterable) of dspy.Example, got {type(examples).__name__}")
    return list(examples)


def check_examples(name: str, examples: Sequence[dspy.Example]) -> None:
    for i, ex in enumerate(examples):
        if not isinstance(ex, dspy.Example):
            raise TypeError(f"{name}[{i}] is a {type(ex).__name__}, not a dspy.Example")
        if getattr(ex, "_input_keys", None) is None:
            raise ValueError(
                f"{name}[{i}] has no input fields marked: build examples with "
                "dspy.Example(...).with_inputs('question', ...)"
            )


def check_valset_size(valset: Sequence[dspy.Example]) -> None:
    if len(valset) < MIN_VALSET_SIZE:
        raise ValueError(
            f"the valset has {len(valset)} examples; at least {MIN_VALSET_SIZE} are needed to measure a rule's gain"
        )


def split_data(trainset: Any, valset: Any, *, val_fraction: float,
               seed: int) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Checked train and val lists; without a valset, the trainset is split by ``seed``."""
    trainset = materialize("trainset", trainset)
    if not trainset:
        raise ValueError("trainset is empty: Concept Distillation learns from the student's mistakes on it")
    check_examples("trainset", trainset)
    if valset is None:
        n_val = max(MIN_VALSET_SIZE, round(len(trainset) * val_fraction))
        if len(trainset) - n_val < 1:
            raise ValueError(
                f"the trainset has {len(trainset)} examples, too few to hold out a valset of {MIN_VALSET_SIZE} "
                "or more to measure a rule's gain; pass valset= or more training examples"
            )
        shuffled = list(trainset)
        random.Random(seed).shuffle(shuffled)
        valset, trainset = shuffled[:n_val], shuffled[n_val:]
        logger.info("no valset given: split the trainset (seed=%d) into %d training and %d validation examples",
                    seed, len(trainset), len(valset))
    else:
        valset = materialize("valset", valset)
        check_examples("valset", valset)
    check_valset_size(valset)
    return trainset, valset
