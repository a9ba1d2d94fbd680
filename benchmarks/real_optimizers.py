"""The optimizers `benchmarks/run.py --optimizers ...` compares on a real task, and their settings.

Two modes:

- default settings: each optimizer at the settings of the simulated comparison (benchmarks/compare_optimizers.py):
  ConceptDistillation presets; COPRO breadth 4, depth 2; MIPROv2 ``auto="light"`` zero-shot; GEPA ``auto="light"``;
  SIMBA batch 8 (or the trainset size), 4 steps; InferRules 10 candidates, zero-shot.
- budget-matched (``budget`` student calls per compile): ConceptDistillation gets ``max_student_calls=budget``
  and GEPA ``max_metric_calls`` (a hard limit each); COPRO, MIPROv2, SIMBA and InferRules have no call limit, so
  they get the settings whose planned student calls come nearest the budget (``plan`` below). The comparison
  reports the calls each one really made.

Every optimizer gets the same data: the trainset and the valset (COPRO and SIMBA take only a trainset, by design),
the task's metric, the student as DSPy's configured LM and the teacher as its instruction writer (``prompt_model``,
``reflection_lm``, ``teacher_lm``). Demos are off everywhere (0-shot), so all of them optimize instructions only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_concept_distill import ConceptDistillation

BASELINE = "baseline"
CD_KEYS = ("cd-light", "cd-medium", "cd-heavy")
DSPY_KEYS = ("copro", "miprov2", "gepa", "simba", "infer-rules")
OPTIMIZER_KEYS = (BASELINE, *CD_KEYS, *DSPY_KEYS)


@dataclass
class CompileInputs:
    """What one optimizer run gets."""

    program: dspy.Module
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    metric: Callable[..., Any]
    teacher: dspy.LM
    seed: int
    num_threads: int


@dataclass(frozen=True)
class Plan:
    """One optimizer's settings: constructor and compile keyword arguments, the student calls they plan to spend
    (None when the optimizer enforces the budget itself or the count is not known in advance), in words."""

    key: str
    init: dict[str, Any]
    compile: dict[str, Any]
    planned_calls: int | None
    settings: str


def plan(key: str, *, budget: int | None, n_train: int, n_val: int, predictors: int = 1) -> Plan:
    """The settings of optimizer ``key``: its defaults, or those nearest ``budget`` student calls."""
    if key not in OPTIMIZER_KEYS:
        raise ValueError(f"unknown optimizer {key!r}; choose from {', '.join(OPTIMIZER_KEYS)}")
    runs = None if budget is None else max(1, budget // max(1, predictors))  # program runs (metric calls)
    planners: dict[str, Callable[..., Plan]] = {
        BASELINE: lambda *_: Plan(BASELINE, {}, {}, 0, "the program as given (no compile)"),
        "copro": _copro, "miprov2": _mipro, "gepa": _gepa, "simba": _simba, "infer-rules": _infer_rules,
    }
    if key in CD_KEYS:
        return _cd(key, budget)
    made = planners[key](runs, n_train, n_val)
    if made.planned_calls is not None:
        made = Plan(made.key, made.init, made.compile, made.planned_calls * predictors, made.settings)
    return made


def _cd(key: str, budget: int | None) -> Plan:
    auto = key.split("-", 1)[1]
    init: dict[str, Any] = {"auto": auto}
    if budget is not None:
        init["max_student_calls"] = budget
        return Plan(key, init, {}, None, f"auto='{auto}', max_student_calls={budget} (hard limit)")
    return Plan(key, init, {}, None, f"auto='{auto}' (preset budget)")


def _copro(runs: int | None, n_train: int, n_val: int) -> Plan:
    # COPRO scores about breadth candidates per depth on the whole trainset.
    breadth, depth = 4, 2
    if runs is not None:
        depth = 1 if runs < 8 * n_train else 2
        breadth = max(2, round(runs / (depth * n_train)))
    return Plan("copro", {"breadth": breadth, "depth": depth}, {}, breadth * depth * n_train,
                f"breadth={breadth}, depth={depth}; scores candidates on the trainset")


def _mipro(runs: int | None, n_train: int, n_val: int) -> Plan:
    zero_shot = {"max_bootstrapped_demos": 0, "max_labeled_demos": 0}
    if runs is None:
        return Plan("miprov2", {"auto": "light", **zero_shot}, {}, None, "auto='light', 0-shot")
    # MIPROv2 first runs the program on the trainset to bootstrap examples for its proposer (even 0-shot); without
    # minibatches it then scores the default program, and one candidate per trial, on the whole valset.
    trials = max(1, round((runs - n_train) / n_val) - 1)
    candidates = max(2, min(trials, 6))
    return Plan("miprov2", {"auto": None, "num_candidates": candidates, **zero_shot},
                {"num_trials": trials, "minibatch": False}, n_train + (trials + 1) * n_val,
                f"auto=None, num_candidates={candidates}, num_trials={trials}, minibatch=False, 0-shot")


def _gepa(runs: int | None, n_train: int, n_val: int) -> Plan:
    if runs is None:
        return Plan("gepa", {"auto": "light"}, {}, None, "auto='light'")
    return Plan("gepa", {"max_metric_calls": runs}, {}, None, f"max_metric_calls={runs} (hard limit)")


def _simba(runs: int | None, n_train: int, n_val: int) -> Plan:
    bsize, candidates, steps = min(8, n_train), 6, 4
    if runs is not None:
        bsize, candidates = min(4 if runs < 100 else 8, n_train), 2
        steps = max(1, (runs - (candidates + 1) * n_train) // (bsize * (2 * candidates + 1)))
    # Each step: bsize x candidates trajectories, then up to candidates + 1 programs on the batch; at the end the
    # best candidates + 1 programs on the whole trainset.
    planned = steps * bsize * (2 * candidates + 1) + (candidates + 1) * n_train
    return Plan("simba", {"bsize": bsize, "num_candidates": candidates, "max_steps": steps, "max_demos": 0}, {},
                planned, f"bsize={bsize}, num_candidates={candidates}, max_steps={steps}, max_demos=0; trainset only")


def _infer_rules(runs: int | None, n_train: int, n_val: int) -> Plan:
    candidates = 10 if runs is None else max(1, round(runs / n_val))
    return Plan("infer-rules", {"num_candidates": candidates}, {}, candidates * n_val,
                f"num_candidates={candidates}, num_rules=10, 0-shot; scores each rule set on the valset")


def feedback_metric(metric: Callable[..., Any]) -> Callable[..., dspy.Prediction]:
    """GEPA's five-argument metric: the task metric as the score, with what was expected as feedback."""

    def with_feedback(gold: dspy.Example, pred: dspy.Prediction, trace: Any = None, pred_name: str | None = None,
                      pred_trace: Any = None) -> dspy.Prediction:
        score = metric(gold, pred)
        score = float(getattr(score, "score", score))
        expected = dict(gold.labels().items())
        feedback = "Correct." if score >= 1 else f"Incorrect: expected {expected}, got {dict(pred.items())}."
        return dspy.Prediction(score=score, feedback=feedback)

    return with_feedback


def compile_with(chosen: Plan, inputs: CompileInputs) -> tuple[dspy.Module, Any]:
    """Run the planned optimizer; returns the optimized program and, for ConceptDistillation, its result."""
    runner = _RUNNERS.get(chosen.key) or (_run_cd if chosen.key in CD_KEYS else None)
    if chosen.key == BASELINE:
        return inputs.program, None
    assert runner is not None
    return runner(chosen, inputs)


def _run_cd(chosen: Plan, x: CompileInputs) -> tuple[dspy.Module, Any]:
    optimizer = ConceptDistillation(metric=x.metric, teacher_lm=x.teacher, seed=x.seed, num_threads=x.num_threads,
                                    **chosen.init)
    optimized = optimizer.compile(x.program, trainset=x.trainset, valset=x.valset)
    return optimized, optimized.distillation


def _run_copro(chosen: Plan, x: CompileInputs) -> tuple[dspy.Module, Any]:
    from dspy.teleprompt import COPRO

    optimizer = COPRO(prompt_model=x.teacher, metric=x.metric, **chosen.init)
    return optimizer.compile(x.program, trainset=x.trainset,
                             eval_kwargs={"num_threads": x.num_threads, "display_progress": False}), None


def _run_mipro(chosen: Plan, x: CompileInputs) -> tuple[dspy.Module, Any]:
    from dspy.teleprompt import MIPROv2

    optimizer = MIPROv2(metric=x.metric, prompt_model=x.teacher, num_threads=x.num_threads, seed=x.seed,
                        verbose=False, **chosen.init)
    return optimizer.compile(x.program, trainset=x.trainset, valset=x.valset, **chosen.compile), None


def _run_gepa(chosen: Plan, x: CompileInputs) -> tuple[dspy.Module, Any]:
    from dspy.teleprompt import GEPA

    optimizer = GEPA(metric=feedback_metric(x.metric), reflection_lm=x.teacher, num_threads=x.num_threads,
                     seed=x.seed, **chosen.init)
    return optimizer.compile(x.program, trainset=x.trainset, valset=x.valset), None


def _run_simba(chosen: Plan, x: CompileInputs) -> tuple[dspy.Module, Any]:
    from dspy.teleprompt import SIMBA

    optimizer = SIMBA(metric=x.metric, prompt_model=x.teacher, num_threads=x.num_threads, **chosen.init)
    return optimizer.compile(x.program, trainset=x.trainset, seed=x.seed), None


def _run_infer_rules(chosen: Plan, x: CompileInputs) -> tuple[dspy.Module, Any]:
    from dspy.teleprompt import InferRules

    optimizer = InferRules(num_rules=10, num_threads=x.num_threads, teacher_settings={"lm": x.teacher},
                           metric=x.metric, max_bootstrapped_demos=0, max_labeled_demos=0, **chosen.init)
    return optimizer.compile(x.program, trainset=x.trainset, valset=x.valset), None


_RUNNERS: dict[str, Callable[[Plan, CompileInputs], tuple[dspy.Module, Any]]] = {
    "copro": _run_copro, "miprov2": _run_mipro, "gepa": _run_gepa, "simba": _run_simba,
    "infer-rules": _run_infer_rules,
}
