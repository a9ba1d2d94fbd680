"""How many student-LM calls DSPy's own optimizers spend on the simulated task ConceptDistillation solves, and
whether each one reaches the best rule set (``python -m benchmarks compare``).

Per seed, every optimizer gets the same fresh ``SimulatedTask.create(20, 20, seed=seed)`` (scripted student, 20
train and 20 validation examples), its own fresh student LM with caching off, and ``ChainOfThought("question ->
answer: float")`` to optimize. DSPy's optimizers get ``SimulatedProposerEngine`` (``proposer.py``) as their
prompt/reflection/teacher model: it writes instructions with random subsets of the world's rules, so they must
search for the best set. ConceptDistillation gets the world's scripted teacher. Student calls are counted at the
student engine during ``compile`` only; the returned program is then scored on the valset with another fresh
student LM (not counted). "Found best" means its instructions hold every helpful concept phrase and no harmful
distractor phrase (the simulated student then scores 1.0 on the valset). The optimizers and their settings are
those of the registry (``benchmarks/harness/optimizers.py``), which the task family (``family.py``) runs over the
whole family; this comparison keeps the original single-task claim check.
"""

from __future__ import annotations

import json
import logging
import platform
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import dspy

from dspy_concept_distill.testing import Prompt, SimExample, SimulatedStudentEngine, SimulatedTask, SimulatedWorld

from ..optimizers import NUM_THREADS, OPTIMIZERS, RunContext
from ..paths import LOCAL_RESULTS
from ..provenance import library_revision, package_versions
from .compare_report import NOTES, OURS, markdown, summarize
from .proposer import SimulatedProposerEngine, proposer_lm, world_pool
from .runs import instructions_of, run_optimizer, score_with

logger = logging.getLogger("compare_optimizers")

N_TRAIN = 20
N_VAL = 20
P_HELPFUL, P_DISTRACTOR = 0.5, 0.3  # the proposer's chance to include a helpful rule / a distractor
DEFAULT_OUT = LOCAL_RESULTS / "compare_optimizers.json"
SAMPLING_NOISE = 0.2


class SamplingStudentEngine(SimulatedStudentEngine):
    """The world's scripted student plus sampling variance, for the one extra SIMBA row: a request sent at a
    temperature above 0 gets its correctness flipped with probability ``noise`` (seeded, one draw per call), as a
    real model sampled at temperature 1.0 sometimes misses what it usually gets right and vice versa. Requests at
    the default temperature are answered exactly as the world's student answers them.

    SIMBA samples its trajectories with ``lm.copy(rollout_id=i, temperature=1.0)`` and builds rules only from
    examples whose samples disagree; the deterministic student never disagrees with itself.
    """

    def __init__(self, world: SimulatedWorld, *, noise: float = SAMPLING_NOISE, seed: int = 0) -> None:
        super().__init__(world)
        self.noise = noise
        self.sampled_calls = 0
        self._noise_rng = random.Random(seed)

    def correct(self, prompt: Prompt, example: SimExample, fields: list[str]) -> bool:
        ok = super().correct(prompt, example, fields)
        if prompt.temperature:
            with self._lock:
                self.sampled_calls += 1
                flip = self._noise_rng.random() < self.noise
            ok = ok != flip
        return ok


# -- what is compared -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the comparison. ``in_claim`` rows are the product claim's optimizers (the cheapest of them is
    the bar ConceptDistillation must beat); the others are extra, lighter settings reported for context."""

    key: str
    label: str
    settings: str
    claimed_calls: int | None
    in_claim: bool
    run: Callable[[RunContext], dspy.Module]
    best_score_log: str | None = None  # regex for the best score (0-100) the optimizer logs, when it logs one


def make_program() -> dspy.Module:
    """The program every optimizer gets, the one ConceptDistillation's own tests use."""
    return dspy.ChainOfThought("question -> answer: float")


def with_settings(key: str, **init: Any) -> Callable[[RunContext], dspy.Module]:
    """Registry optimizer ``key`` at its simulated settings, with ``init`` replacing some of them."""
    spec = OPTIMIZERS[key]
    chosen = replace(spec.simulated, init={**spec.simulated.init, **init})
    return lambda ctx: spec.compile(chosen, ctx)


def run_simba_sampling(ctx: RunContext) -> dspy.Module:
    """SIMBA as above, sequential (so the sampling noise is repeatable), on a student with sampling variance."""
    return OPTIMIZERS["simba"].run(replace(ctx, num_threads=1))


INFER_RULES_BEST = r"Final best score: ([\d.]+)"

def claimed(key: str, row: str, calls: int, best_score_log: str | None = None) -> OptimizerSpec:
    """A row of the product claim: registry optimizer ``key`` at its simulated settings, under the row key ``row``,
    with the student calls the claim states."""
    spec = OPTIMIZERS[key]
    return OptimizerSpec(row, spec.label, spec.settings, calls, True, spec.run, best_score_log)


SPECS: list[OptimizerSpec] = [
    claimed("copro", "copro", 160),
    claimed("infer-rules", "infer_rules", 200, INFER_RULES_BEST),
    claimed("miprov2", "mipro", 235),
    claimed("gepa", "gepa", 471),
    claimed("simba", "simba", 516),
    OptimizerSpec(OURS, "ConceptDistillation light", "auto='light', teacher_lm=world.teacher_lm(cache=False)",
                  None, False, OPTIMIZERS["cd-light"].run),
]

EXTRA_SPECS: list[OptimizerSpec] = [
    OptimizerSpec("copro_min", "COPRO (smallest)", "breadth=2, depth=1: the least COPRO accepts (breadth > 1)",
                  None, False, with_settings("copro", breadth=2, depth=1)),
    OptimizerSpec("simba_sampling", "SIMBA (student with sampling noise)",
                  f"as SIMBA above, num_threads=1, and a student whose answers flip with p={SAMPLING_NOISE} "
                  "when sampled at temperature > 0 (SIMBA's trajectory sampling); default-temperature calls "
                  "are unchanged", None, False, run_simba_sampling),
    OptimizerSpec("infer_rules_min", "InferRules (2 candidates)",
                  "num_candidates=2, otherwise as above: the least that is still a choice",
                  None, False, with_settings("infer-rules", num_candidates=2), INFER_RULES_BEST),
]


# -- one run ----------------------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one optimizer did on one seed."""

    key: str
    label: str
    seed: int
    status: str = "ok"
    error: str | None = None
    student_calls: int = 0
    helper_calls: int = 0
    val_score: float | None = None
    baseline_val_score: float | None = None
    found_best: bool = False
    helpful_present: list[str] = field(default_factory=list)
    harmful_present: list[str] = field(default_factory=list)
    neutral_present: list[str] = field(default_factory=list)
    demos: int = 0
    best_set_proposed: bool | None = None
    proposals: int | None = None
    logged_best_score: float | None = None
    wall_seconds: float = 0.0
    library_warnings: int = 0


def rules_in(world: SimulatedWorld, text: str) -> tuple[list[str], list[str], list[str]]:
    """Which concept / harmful / neutral phrases ``text`` holds, judged the way the simulated student judges."""
    norm = " ".join(text.lower().split())
    helpful = [c.name for c in world.concepts if c.phrase.lower() in norm]
    harmful = [d.phrase for d in world.distractors if d.kind == "harmful" and d.phrase.lower() in norm]
    neutral = [d.phrase for d in world.distractors if d.kind != "harmful" and d.phrase.lower() in norm]
    return helpful, harmful, neutral


def is_best_set(world: SimulatedWorld, text: str) -> bool:
    """Every helpful concept phrase and no harmful distractor phrase."""
    helpful, harmful, _ = rules_in(world, text)
    return len(helpful) == len(world.concepts) and not harmful


def best_set_proposed(world: SimulatedWorld, engine: SimulatedProposerEngine) -> bool:
    """Whether any single proposal the optimizer received was already the best rule set."""
    return any(is_best_set(world, "\n".join(rules)) for rules in engine.proposals)


def new_task(seed: int, flip_rate: float) -> SimulatedTask:
    return SimulatedTask.create(N_TRAIN, N_VAL, seed=seed, flip_rate=flip_rate)


def run_one(spec: OptimizerSpec, seed: int, *, flip_rate: float = 0.0, num_threads: int = NUM_THREADS) -> RunRecord:
    """Run one optimizer on a fresh task; a failure is recorded, not raised."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    task = new_task(seed, flip_rate)
    if spec.key == "simba_sampling":
        student = dspy.LM("simulated/student", engine=SamplingStudentEngine(task.world, seed=seed), cache=False)
    else:
        student = task.world.student_lm(cache=False)
    helper = task.world.teacher_lm(cache=False) if spec.key == OURS else proposer_lm(
        world_pool(task.world), seed=seed, p_helpful=P_HELPFUL, p_other=P_DISTRACTOR)
    ctx = RunContext(make_program(), task.trainset, task.valset, task.world.metric, student, helper, seed,
                     num_threads, feedback_field="answer")
    record = RunRecord(spec.key, spec.label, seed)
    logger.info("seed %d: %s (%s)", seed, spec.label, spec.settings)
    outcome = run_optimizer(spec, ctx)
    record.wall_seconds = round(outcome.wall_seconds, 2)
    record.student_calls = student.engine.calls
    record.helper_calls = helper.engine.calls
    log_lines = outcome.output.splitlines()
    record.library_warnings = sum(" WARNING " in line or " ERROR " in line for line in log_lines)
    if outcome.program is None:
        record.status, record.error = "error", outcome.error
        logger.error("seed %d: %s failed after %d student calls: %s; last output:\n%s", seed, spec.label,
                     record.student_calls, record.error, "\n".join(log_lines[-15:]))
        logger.debug("traceback:\n%s", outcome.traceback)
        return record
    optimized = outcome.program
    if spec.best_score_log and (found := re.findall(spec.best_score_log, outcome.output)):
        record.logged_best_score = float(found[-1]) / 100
    if isinstance(helper.engine, SimulatedProposerEngine):
        record.best_set_proposed = best_set_proposed(task.world, helper.engine)
        record.proposals = len(helper.engine.proposals)
    text = instructions_of(optimized)
    record.helpful_present, record.harmful_present, record.neutral_present = rules_in(task.world, text)
    record.found_best = is_best_set(task.world, text)
    record.demos = sum(len(p.demos) for _, p in optimized.named_predictors())
    record.val_score = score_with(optimized, task.world.student_lm(cache=False), task.valset, task.world.metric,
                                  num_threads)
    logger.info("seed %d: %s: %d student calls, %d helper calls, valset %.2f, best rule set %s, %.1fs", seed,
                spec.label, record.student_calls, record.helper_calls, record.val_score,
                "found" if record.found_best else "not found", record.wall_seconds)
    return record


# -- summary ----------------------------------------------------------------------------------------------------------
def run_benchmark(seeds: Sequence[int], *, flip_rate: float = 0.0, extras: bool = True,
                  num_threads: int = NUM_THREADS) -> tuple[list[OptimizerSpec], list[RunRecord]]:
    """Run every optimizer on every seed with DSPy's caches off."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    specs = SPECS + (EXTRA_SPECS if extras else [])
    records = [run_one(spec, seed, flip_rate=flip_rate, num_threads=num_threads) for seed in seeds for spec in specs]
    return specs, records


def measure(seeds: Sequence[int], *, flip_rate: float, extras: bool, num_threads: int,
            out: Path) -> str:
    """Run the comparison, write ``out`` (JSON) and the Markdown report next to it; returns the terminal table."""
    started = time.perf_counter()
    specs, records = run_benchmark(seeds, flip_rate=flip_rate, extras=extras, num_threads=num_threads)
    summary = summarize(specs, records, seeds)
    meta = {
        "seeds": list(seeds), "flip_rate": flip_rate, "n_train": N_TRAIN, "n_val": N_VAL,
        "num_threads": num_threads, "program": 'ChainOfThought("question -> answer: float")',
        "versions": package_versions("dspy", "gepa", "optuna", "dspy-concept-distill"),
        "python": platform.python_version(), "library_revision": library_revision(),
        "proposer": {"p_helpful": P_HELPFUL, "p_distractor": P_DISTRACTOR},
        "total_seconds": round(time.perf_counter() - started, 1), "notes": NOTES,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "settings": {s.key: {"label": s.label, "settings": s.settings,
                                                  "claimed_calls": s.claimed_calls, "in_claim": s.in_claim}
                                          for s in specs},
               "summary": summary, "runs": [asdict(r) for r in records]}
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    full, terminal = markdown(summary, records, meta)
    out.with_suffix(".md").write_text(full)
    logger.info("wrote %s and %s in %.1fs", out, out.with_suffix(".md"), meta["total_seconds"])
    return terminal
