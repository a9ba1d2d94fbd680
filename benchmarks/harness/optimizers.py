"""Every optimizer the benchmarks run, in one registry (``OPTIMIZERS``): how each one is compiled, its fixed
settings in the simulated benchmarks, and its settings on a real task.

- **Simulated benchmarks** (``family``, ``compare``, ``speed``, ``speculation``, ``noise``): each optimizer at the
  fixed settings of the original comparison (``Optimizer.simulated``): COPRO breadth 4, depth 2; MIPROv2
  ``auto="light"`` zero-shot; GEPA ``auto="light"``; SIMBA batch 8, 4 steps; InferRules 10 candidates, zero-shot.
  ConceptDistillation runs with a preset and any extra keyword arguments (``RunContext.cd_kwargs``).
- **Real tasks** (``run --optimizers``): ``plan(key, budget=...)``. Default settings (``budget=None``): those of
  the simulated comparison, with SIMBA's batch cut to the trainset and no demos. Budget-matched (``budget`` student
  calls per compile): ConceptDistillation gets ``max_student_calls=budget`` and GEPA ``max_metric_calls`` (a hard
  limit each); COPRO, MIPROv2, SIMBA and InferRules have no call limit, so they get the settings whose planned
  student calls come nearest the budget. The comparison reports the calls each one really made. ``baseline`` is
  the program as given (no compile).

Every optimizer gets the same data: the trainset and the valset (COPRO and SIMBA take only a trainset, by design),
the task's metric, the student as DSPy's configured LM and the helper LM as its instruction writer
(``prompt_model``, ``reflection_lm``, ``teacher_lm``: the teacher on a real task; in the simulated worlds the blind
proposer, or ConceptDistillation's scripted teacher). Demos are off except SIMBA's in the simulated benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.teleprompt import COPRO, GEPA, SIMBA, InferRules, MIPROv2

from dspy_concept_distill import ConceptDistillation

NUM_THREADS = 4
BASELINE = "baseline"


@dataclass
class RunContext:
    """Everything one optimizer run gets: data, metric, the student LM, the helper LM that writes instructions (the
    teacher, the blind proposer, or ConceptDistillation's teacher), the program, the seed, ConceptDistillation's
    extra kwargs, and the output field GEPA's feedback names (``feedback_metric``)."""

    program: dspy.Module
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    metric: Callable[..., Any]
    student_lm: dspy.LM
    helper_lm: dspy.LM
    seed: int
    num_threads: int = NUM_THREADS
    cd_kwargs: dict[str, Any] = field(default_factory=dict)
    feedback_field: str | None = None


@dataclass(frozen=True)
class Plan:
    """One optimizer's settings: constructor and compile keyword arguments, the student calls they plan to spend
    (None when the optimizer enforces the budget itself or the count is not known in advance), in words."""

    key: str
    init: dict[str, Any]
    compile: dict[str, Any]
    planned_calls: int | None
    settings: str


@dataclass(frozen=True)
class Optimizer:
    """One optimizer: ``compile`` runs it at a ``Plan``'s settings; ``simulated`` is its plan in the simulated
    benchmarks, ``plan_for(limit, n_train, n_val)`` its plan on a real task (``limit``: the student calls
    ConceptDistillation may spend, the program runs any other optimizer may spend, None for its defaults; see
    ``plan``). ``is_cd``: ConceptDistillation (gets the task's CD teacher)."""

    key: str
    label: str
    compile: Callable[[Plan, RunContext], dspy.Module]
    simulated: Plan
    plan_for: Callable[[int | None, int, int], Plan]
    is_cd: bool = False

    @property
    def settings(self) -> str:
        return self.simulated.settings

    def run(self, ctx: RunContext) -> dspy.Module:
        """Compile ``ctx.program`` at the simulated benchmarks' settings."""
        return self.compile(self.simulated, ctx)


def feedback_metric(metric: Callable[..., Any], *, answer_field: str | None = None) -> Callable[..., dspy.Prediction]:
    """GEPA's five-argument metric: ``metric`` as the score, with what was expected as feedback. With
    ``answer_field`` (the simulated worlds: ``answer``) the feedback names that field's expected and given values;
    without it, every label expected and every output given."""

    def with_feedback(gold: dspy.Example, pred: dspy.Prediction, trace: Any = None, pred_name: str | None = None,
                      pred_trace: Any = None) -> dspy.Prediction:
        value = metric(gold, pred)
        score = float(getattr(value, "score", value))
        if answer_field is not None:
            expected, got = getattr(gold, answer_field), getattr(pred, answer_field, None)
            feedback = (f"Correct: the answer is {expected}." if score >= 1
                        else f"Incorrect: expected {expected}, got {got}.")
        else:
            expected = dict(gold.labels().items())
            feedback = "Correct." if score >= 1 else f"Incorrect: expected {expected}, got {dict(pred.items())}."
        return dspy.Prediction(score=score, feedback=feedback)

    return with_feedback


# -- how each optimizer is compiled ----------------------------------------------------------------------------------
def _compile_cd(chosen: Plan, ctx: RunContext) -> dspy.Module:
    kwargs = {"seed": ctx.seed, "num_threads": ctx.num_threads, **chosen.init, **ctx.cd_kwargs}
    optimizer = ConceptDistillation(metric=ctx.metric, teacher_lm=ctx.helper_lm, **kwargs)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset, **chosen.compile)


def _compile_copro(chosen: Plan, ctx: RunContext) -> dspy.Module:
    optimizer = COPRO(prompt_model=ctx.helper_lm, metric=ctx.metric, **chosen.init)
    return optimizer.compile(ctx.program, trainset=ctx.trainset,
                             eval_kwargs={"num_threads": ctx.num_threads, "display_progress": False}, **chosen.compile)


def _compile_mipro(chosen: Plan, ctx: RunContext) -> dspy.Module:
    optimizer = MIPROv2(metric=ctx.metric, prompt_model=ctx.helper_lm, task_model=ctx.student_lm,
                        num_threads=ctx.num_threads, seed=ctx.seed, verbose=False, **chosen.init)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset, **chosen.compile)


def _compile_gepa(chosen: Plan, ctx: RunContext) -> dspy.Module:
    optimizer = GEPA(metric=feedback_metric(ctx.metric, answer_field=ctx.feedback_field), reflection_lm=ctx.helper_lm,
                     num_threads=ctx.num_threads, seed=ctx.seed, **chosen.init)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset, **chosen.compile)


def _compile_simba(chosen: Plan, ctx: RunContext) -> dspy.Module:
    optimizer = SIMBA(metric=ctx.metric, prompt_model=ctx.helper_lm, num_threads=ctx.num_threads, **chosen.init)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, seed=ctx.seed, **chosen.compile)


def _compile_infer_rules(chosen: Plan, ctx: RunContext) -> dspy.Module:
    optimizer = InferRules(num_rules=10, num_threads=ctx.num_threads, teacher_settings={"lm": ctx.helper_lm},
                           metric=ctx.metric, max_bootstrapped_demos=0, max_labeled_demos=0, **chosen.init)
    return optimizer.compile(ctx.program, trainset=ctx.trainset, valset=ctx.valset, **chosen.compile)


# -- settings on a real task: defaults (runs None) or nearest a budget of program runs -------------------------------
def _cd_plan(auto: str) -> Callable[[int | None, int, int], Plan]:
    def plan_cd(budget: int | None, n_train: int, n_val: int) -> Plan:
        init: dict[str, Any] = {"auto": auto}
        if budget is not None:
            init["max_student_calls"] = budget
            return Plan(f"cd-{auto}", init, {}, None, f"auto='{auto}', max_student_calls={budget} (hard limit)")
        return Plan(f"cd-{auto}", init, {}, None, f"auto='{auto}' (preset budget)")

    return plan_cd


def _copro_plan(runs: int | None, n_train: int, n_val: int) -> Plan:
    # COPRO scores about breadth candidates per depth on the whole trainset.
    breadth, depth = 4, 2
    if runs is not None:
        depth = 1 if runs < 8 * n_train else 2
        breadth = max(2, round(runs / (depth * n_train)))
    return Plan("copro", {"breadth": breadth, "depth": depth}, {}, breadth * depth * n_train,
                f"breadth={breadth}, depth={depth}; scores candidates on the trainset")


def _mipro_plan(runs: int | None, n_train: int, n_val: int) -> Plan:
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


def _gepa_plan(runs: int | None, n_train: int, n_val: int) -> Plan:
    if runs is None:
        return Plan("gepa", {"auto": "light"}, {}, None, "auto='light'")
    return Plan("gepa", {"max_metric_calls": runs}, {}, None, f"max_metric_calls={runs} (hard limit)")


def _simba_plan(runs: int | None, n_train: int, n_val: int) -> Plan:
    bsize, candidates, steps = min(8, n_train), 6, 4
    if runs is not None:
        bsize, candidates = min(4 if runs < 100 else 8, n_train), 2
        steps = max(1, (runs - (candidates + 1) * n_train) // (bsize * (2 * candidates + 1)))
    # Each step: bsize x candidates trajectories, then up to candidates + 1 programs on the batch; at the end the
    # best candidates + 1 programs on the whole trainset.
    planned = steps * bsize * (2 * candidates + 1) + (candidates + 1) * n_train
    return Plan("simba", {"bsize": bsize, "num_candidates": candidates, "max_steps": steps, "max_demos": 0}, {},
                planned, f"bsize={bsize}, num_candidates={candidates}, max_steps={steps}, max_demos=0; trainset only")


def _infer_rules_plan(runs: int | None, n_train: int, n_val: int) -> Plan:
    candidates = 10 if runs is None else max(1, round(runs / n_val))
    return Plan("infer-rules", {"num_candidates": candidates}, {}, candidates * n_val,
                f"num_candidates={candidates}, num_rules=10, 0-shot; scores each rule set on the valset")


# -- the registry ----------------------------------------------------------------------------------------------------
def _cd(auto: str) -> Optimizer:
    return Optimizer(f"cd-{auto}", f"ConceptDistillation {auto}", _compile_cd,
                     Plan(f"cd-{auto}", {"auto": auto}, {}, None, f"auto='{auto}' (+ --cd-kwargs)"), _cd_plan(auto),
                     is_cd=True)


OPTIMIZERS: dict[str, Optimizer] = {spec.key: spec for spec in [
    _cd("light"), _cd("medium"), _cd("heavy"),
    Optimizer("copro", "COPRO", _compile_copro,
              Plan("copro", {"breadth": 4, "depth": 2}, {}, None,
                   "breadth=4, depth=2, init_temperature=1.4 (default); scores on the trainset"), _copro_plan),
    Optimizer("miprov2", "MIPROv2 light", _compile_mipro,
              Plan("miprov2", {"auto": "light", "max_bootstrapped_demos": 0, "max_labeled_demos": 0},
                   {"requires_permission_to_run": False}, None,
                   "auto='light', max_bootstrapped_demos=0, max_labeled_demos=0 (0-shot), valset=valset"),
              _mipro_plan),
    Optimizer("gepa", "GEPA light", _compile_gepa,
              Plan("gepa", {"auto": "light"}, {}, None, "auto='light', reflection_minibatch_size=3 (default), "
                   "use_merge=True (default), valset=valset"), _gepa_plan),
    Optimizer("simba", "SIMBA", _compile_simba,
              Plan("simba", {"bsize": 8, "max_steps": 4, "num_candidates": 6, "max_demos": 4}, {}, None,
                   "bsize=8, max_steps=4, num_candidates=6 (default), max_demos=4 (default); trainset only"),
              _simba_plan),
    Optimizer("infer-rules", "InferRules", _compile_infer_rules,
              Plan("infer-rules", {"num_candidates": 10}, {}, None, "num_candidates=10 (default), num_rules=10, "
                   "max_bootstrapped_demos=0, max_labeled_demos=0, valset=valset"), _infer_rules_plan),
]}
OPTIMIZER_KEYS = (BASELINE, *OPTIMIZERS)  # what a real-task comparison can run
CD_KEYS = tuple(key for key, spec in OPTIMIZERS.items() if spec.is_cd)
DSPY_KEYS = tuple(key for key, spec in OPTIMIZERS.items() if not spec.is_cd)


def plan(key: str, *, budget: int | None, n_train: int, n_val: int, predictors: int = 1) -> Plan:
    """The settings of optimizer ``key`` on a real task: its defaults, or those nearest ``budget`` student calls."""
    if key not in OPTIMIZER_KEYS:
        raise ValueError(f"unknown optimizer {key!r}; choose from {', '.join(OPTIMIZER_KEYS)}")
    if key == BASELINE:
        return Plan(BASELINE, {}, {}, 0, "the program as given (no compile)")
    spec = OPTIMIZERS[key]
    if spec.is_cd:
        return spec.plan_for(budget, n_train, n_val)
    runs = None if budget is None else max(1, budget // max(1, predictors))  # program runs (metric calls)
    made = spec.plan_for(runs, n_train, n_val)
    if made.planned_calls is not None:
        made = Plan(made.key, made.init, made.compile, made.planned_calls * predictors, made.settings)
    return made


def compile_with(chosen: Plan, ctx: RunContext) -> tuple[dspy.Module, Any]:
    """Run the planned optimizer; returns the optimized program and, for ConceptDistillation, its result."""
    if chosen.key == BASELINE:
        return ctx.program, None
    spec = OPTIMIZERS[chosen.key]
    optimized = spec.compile(chosen, ctx)
    return optimized, optimized.distillation if spec.is_cd else None
