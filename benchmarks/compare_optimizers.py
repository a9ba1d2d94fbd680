"""How many student-LM calls DSPy's own optimizers spend on the simulated task ConceptDistillation solves, and
whether each one reaches the best rule set.

Usage: ``python benchmarks/compare_optimizers.py [--seeds 0 1 2] [--flip-rate 0.0]
[--out benchmarks/results/compare_optimizers.json]`` (also writes the Markdown table next to the JSON file and
prints it; progress goes to the log on stderr).

Per seed, every optimizer gets the same fresh ``SimulatedTask.create(20, 20, seed=seed)`` (scripted student, 20
train and 20 validation examples), its own fresh student LM with caching off, and ``ChainOfThought("question ->
answer: float")`` to optimize. DSPy's optimizers get ``SimulatedProposerEngine`` (benchmarks/simulated_proposer.py)
as their prompt/reflection/teacher model: it writes instructions with random subsets of the world's rules, so they
must search for the best set. ConceptDistillation gets the world's scripted teacher. Student calls are counted at
the student engine during ``compile`` only; the returned program is then scored on the valset with another fresh
student LM (not counted). "Found best" means its instructions hold every helpful concept phrase and no harmful
distractor phrase (the simulated student then scores 1.0 on the valset).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import random
import re
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import COPRO, GEPA, SIMBA, InferRules, MIPROv2

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.testing import Prompt, SimExample, SimulatedStudentEngine, SimulatedTask, SimulatedWorld

try:  # run as a script: benchmarks/ is on sys.path
    from simulated_proposer import SimulatedProposerEngine, proposer_lm
except ModuleNotFoundError:  # imported as benchmarks.compare_optimizers from the repository root
    from benchmarks.simulated_proposer import SimulatedProposerEngine, proposer_lm

logger = logging.getLogger("compare_optimizers")

N_TRAIN = 20
N_VAL = 20
NUM_THREADS = 4
OURS = "ours"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compare_optimizers.json"
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
@dataclass
class RunContext:
    """Everything one optimizer run gets: the task, its student LM, the helper LM that writes instructions (the
    simulated proposer, or the scripted teacher for ConceptDistillation), the program and the seed."""

    task: SimulatedTask
    student_lm: dspy.LM
    helper_lm: dspy.LM
    program: dspy.Module
    seed: int
    num_threads: int = NUM_THREADS

    @property
    def world(self) -> SimulatedWorld:
        return self.task.world


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


def feedback_metric(world: SimulatedWorld) -> Callable[..., dspy.Prediction]:
    """GEPA's five-argument metric: the world's metric as the score, with the expected answer as feedback."""

    def metric(gold: dspy.Example, pred: dspy.Prediction, trace: Any = None, pred_name: str | None = None,
               pred_trace: Any = None) -> dspy.Prediction:
        ok = world.metric(gold, pred)
        got = getattr(pred, "answer", None)
        feedback = f"Correct: the answer is {gold.answer}." if ok else f"Incorrect: expected {gold.answer}, got {got}."
        return dspy.Prediction(score=float(ok), feedback=feedback)

    return metric


def run_copro(ctx: RunContext, *, breadth: int = 4, depth: int = 2) -> dspy.Module:
    optimizer = COPRO(prompt_model=ctx.helper_lm, metric=ctx.world.metric, breadth=breadth, depth=depth)
    return optimizer.compile(ctx.program, trainset=ctx.task.trainset,
                             eval_kwargs={"num_threads": ctx.num_threads, "display_progress": False})


def run_infer_rules(ctx: RunContext, *, num_candidates: int = 10) -> dspy.Module:
    optimizer = InferRules(num_candidates=num_candidates, num_rules=10, num_threads=ctx.num_threads,
                           teacher_settings={"lm": ctx.helper_lm}, metric=ctx.world.metric,
                           max_bootstrapped_demos=0, max_labeled_demos=0)
    return optimizer.compile(ctx.program, trainset=ctx.task.trainset, valset=ctx.task.valset)


def run_mipro(ctx: RunContext) -> dspy.Module:
    optimizer = MIPROv2(metric=ctx.world.metric, prompt_model=ctx.helper_lm, task_model=ctx.student_lm, auto="light",
                        max_bootstrapped_demos=0, max_labeled_demos=0, num_threads=ctx.num_threads, seed=ctx.seed)
    return optimizer.compile(ctx.program, trainset=ctx.task.trainset, valset=ctx.task.valset,
                             requires_permission_to_run=False)


def run_gepa(ctx: RunContext) -> dspy.Module:
    optimizer = GEPA(metric=feedback_metric(ctx.world), auto="light", reflection_lm=ctx.helper_lm,
                     num_threads=ctx.num_threads, seed=ctx.seed)
    return optimizer.compile(ctx.program, trainset=ctx.task.trainset, valset=ctx.task.valset)


def run_simba(ctx: RunContext) -> dspy.Module:
    optimizer = SIMBA(metric=ctx.world.metric, bsize=8, max_steps=4, num_candidates=6, max_demos=4,
                      prompt_model=ctx.helper_lm, num_threads=ctx.num_threads)
    return optimizer.compile(ctx.program, trainset=ctx.task.trainset, seed=ctx.seed)


def run_simba_sampling(ctx: RunContext) -> dspy.Module:
    """SIMBA as above, sequential (so the sampling noise is repeatable), on a student with sampling variance."""
    ctx.num_threads = 1
    return run_simba(ctx)


def run_ours(ctx: RunContext) -> dspy.Module:
    optimizer = ConceptDistillation(metric=ctx.world.metric, teacher_lm=ctx.helper_lm, auto="light", seed=ctx.seed,
                                    num_threads=ctx.num_threads)
    return optimizer.compile(ctx.program, trainset=ctx.task.trainset, valset=ctx.task.valset)


INFER_RULES_BEST = r"Final best score: ([\d.]+)"

SPECS: list[OptimizerSpec] = [
    OptimizerSpec("copro", "COPRO", "breadth=4, depth=2, init_temperature=1.4 (default); scores on the trainset",
                  160, True, run_copro),
    OptimizerSpec("infer_rules", "InferRules",
                  "num_candidates=10 (default), num_rules=10, max_bootstrapped_demos=0, max_labeled_demos=0, "
                  "valset=valset", 200, True, run_infer_rules, INFER_RULES_BEST),
    OptimizerSpec("mipro", "MIPROv2 light",
                  "auto='light', max_bootstrapped_demos=0, max_labeled_demos=0 (0-shot), valset=valset",
                  235, True, run_mipro),
    OptimizerSpec("gepa", "GEPA light",
                  "auto='light', reflection_minibatch_size=3 (default), use_merge=True (default), valset=valset",
                  471, True, run_gepa),
    OptimizerSpec("simba", "SIMBA",
                  "bsize=8, max_steps=4, num_candidates=6 (default), max_demos=4 (default); trainset only",
                  516, True, run_simba),
    OptimizerSpec(OURS, "ConceptDistillation light", "auto='light', teacher_lm=world.teacher_lm(cache=False)",
                  None, False, run_ours),
]

EXTRA_SPECS: list[OptimizerSpec] = [
    OptimizerSpec("copro_min", "COPRO (smallest)", "breadth=2, depth=1: the least COPRO accepts (breadth > 1)",
                  None, False, lambda ctx: run_copro(ctx, breadth=2, depth=1)),
    OptimizerSpec("simba_sampling", "SIMBA (student with sampling noise)",
                  f"as SIMBA above, num_threads=1, and a student whose answers flip with p={SAMPLING_NOISE} "
                  "when sampled at temperature > 0 (SIMBA's trajectory sampling); default-temperature calls "
                  "are unchanged", None, False, run_simba_sampling),
    OptimizerSpec("infer_rules_min", "InferRules (2 candidates)",
                  "num_candidates=2, otherwise as above: the least that is still a choice",
                  None, False, lambda ctx: run_infer_rules(ctx, num_candidates=2), INFER_RULES_BEST),
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


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Keep the optimizers' own prints, progress bars and DSPy's log lines (DSPy logs to the current stderr) out
    of the terminal: stdout is for the final table only."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def instructions_of(program: dspy.Module) -> str:
    """All instructions of a program's predictors, joined."""
    return "\n".join(predictor.signature.instructions for _, predictor in program.named_predictors())


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


def score_on_valset(program: dspy.Module, task: SimulatedTask, num_threads: int = NUM_THREADS) -> float:
    """Valset score (0-1) of ``program`` with a fresh student LM of its own, so no optimizer's counter moves."""
    fresh = task.world.student_lm(cache=False)
    predictors = [predictor for _, predictor in program.named_predictors()]
    saved = [predictor.lm for predictor in predictors]
    try:
        for predictor in predictors:  # set, not deepcopied: deepcopy loses attributes it cannot copy
            predictor.lm = fresh
        with captured_output():
            result = dspy.Evaluate(devset=task.valset, metric=task.world.metric, num_threads=num_threads,
                                   display_progress=False)(program)
    finally:
        for predictor, lm in zip(predictors, saved, strict=True):
            predictor.lm = lm
    return result.score / 100


def new_task(seed: int, flip_rate: float) -> SimulatedTask:
    return SimulatedTask.create(N_TRAIN, N_VAL, seed=seed, flip_rate=flip_rate)


def run_one(spec: OptimizerSpec, seed: int, *, flip_rate: float = 0.0, num_threads: int = NUM_THREADS) -> RunRecord:
    """Run one optimizer on a fresh task; a failure is recorded, not raised."""
    task = new_task(seed, flip_rate)
    if spec.key == "simba_sampling":
        student = dspy.LM("simulated/student", engine=SamplingStudentEngine(task.world, seed=seed), cache=False)
    else:
        student = task.world.student_lm(cache=False)
    helper = task.world.teacher_lm(cache=False) if spec.key == OURS else proposer_lm(task.world, seed=seed)
    ctx = RunContext(task, student, helper, make_program(), seed, num_threads)
    record = RunRecord(spec.key, spec.label, seed)
    logger.info("seed %d: %s (%s)", seed, spec.label, spec.settings)
    start = time.perf_counter()
    optimized = None
    with captured_output() as output:
        try:
            with dspy.context(lm=student):
                optimized = spec.run(ctx)
        except Exception as exc:  # one optimizer failing must not end the benchmark
            record.status = "error"
            record.error = f"{type(exc).__name__}: {exc}"
            logger.debug("traceback:\n%s", traceback.format_exc())
    record.wall_seconds = round(time.perf_counter() - start, 2)
    record.student_calls = student.engine.calls
    record.helper_calls = helper.engine.calls
    log_lines = output.getvalue().splitlines()
    record.library_warnings = sum(" WARNING " in line or " ERROR " in line for line in log_lines)
    if record.status == "error":
        logger.error("seed %d: %s failed after %d student calls: %s; last output:\n%s", seed, spec.label,
                     record.student_calls, record.error, "\n".join(log_lines[-15:]))
        return record
    if spec.best_score_log and (found := re.findall(spec.best_score_log, output.getvalue())):
        record.logged_best_score = float(found[-1]) / 100
    if isinstance(helper.engine, SimulatedProposerEngine):
        record.best_set_proposed = best_set_proposed(task.world, helper.engine)
        record.proposals = len(helper.engine.proposals)
    text = instructions_of(optimized)
    record.helpful_present, record.harmful_present, record.neutral_present = rules_in(task.world, text)
    record.found_best = is_best_set(task.world, text)
    record.demos = sum(len(p.demos) for _, p in optimized.named_predictors())
    record.val_score = score_on_valset(optimized, task, num_threads)
    logger.info("seed %d: %s: %d student calls, %d helper calls, valset %.2f, best rule set %s, %.1fs", seed,
                spec.label, record.student_calls, record.helper_calls, record.val_score,
                "found" if record.found_best else "not found", record.wall_seconds)
    return record


# -- summary ----------------------------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(specs: Sequence[OptimizerSpec], records: Sequence[RunRecord], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-optimizer means, our call ratios (per seed and of the means) and the verdict on the product claim."""
    by_key = {(r.key, r.seed): r for r in records}
    ours = {s: by_key[(OURS, s)] for s in seeds if (OURS, s) in by_key and by_key[(OURS, s)].status == "ok"}
    rows = []
    for spec in specs:
        runs = [by_key[(spec.key, s)] for s in seeds if (spec.key, s) in by_key]
        ok = [r for r in runs if r.status == "ok"]
        ratios = {s: ours[s].student_calls / r.student_calls for s in seeds for r in ok
                  if r.seed == s and s in ours and r.student_calls}
        mean_calls = _mean([r.student_calls for r in ok])
        mean_ours = _mean([ours[s].student_calls for s in ratios])
        rows.append({
            "key": spec.key, "label": spec.label, "settings": spec.settings, "in_claim": spec.in_claim,
            "claimed_calls": spec.claimed_calls, "runs_ok": len(ok), "runs": len(runs),
            "errors": sorted({r.error for r in runs if r.error}),
            "student_calls": {r.seed: r.student_calls for r in ok}, "mean_student_calls": mean_calls,
            "matches_claim": (None if spec.claimed_calls is None or not ok
                              else all(r.student_calls == spec.claimed_calls for r in ok)),
            "mean_helper_calls": _mean([r.helper_calls for r in ok]),
            "mean_val_score": _mean([r.val_score for r in ok if r.val_score is not None]),
            "found_best": sum(r.found_best for r in ok),
            "best_set_proposed": sum(bool(r.best_set_proposed) for r in ok),
            "ours_ratio_per_seed": ratios,
            "ours_ratio_mean": _mean(list(ratios.values())),
            "ours_ratio_of_means": (mean_ours / mean_calls if mean_calls and mean_ours is not None and ratios
                                    else None),
            "mean_wall_seconds": _mean([r.wall_seconds for r in ok]),
        })
    claim_keys = [s.key for s in specs if s.in_claim]
    per_seed = {}
    for s in seeds:
        others = [by_key[(k, s)] for k in claim_keys if (k, s) in by_key and by_key[(k, s)].status == "ok"]
        cheapest = min(others, key=lambda r: r.student_calls) if others else None
        mine = ours.get(s)
        per_seed[s] = {
            "ours_calls": mine.student_calls if mine else None,
            "ours_found_best": bool(mine and mine.found_best),
            "cheapest": cheapest.label if cheapest else None,
            "cheapest_calls": cheapest.student_calls if cheapest else None,
            "holds": bool(mine and cheapest and mine.found_best and mine.student_calls < cheapest.student_calls
                          and len(others) == len(claim_keys)),
        }
    return {"rows": rows, "claim": {"per_seed": per_seed, "holds": all(v["holds"] for v in per_seed.values())}}


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(summary: dict[str, Any], records: Sequence[RunRecord], meta: dict[str, Any]) -> tuple[str, str]:
    """The full Markdown report and the part printed to the terminal (main table and verdict)."""
    seeds = meta["seeds"]
    lines = [
        "| Optimizer | Claimed student calls | Measured student calls (mean) | Per seed | Helper calls (mean) "
        "| Valset score (mean) | Found best rule set (seeds) | Best set among proposals (seeds) "
        "| Ours / theirs (mean of per-seed) |",
        "|---|---:|---:|---|---:|---:|---|---|---:|",
    ]
    for row in summary["rows"]:
        n = row["runs"]
        per_seed = ", ".join(str(row["student_calls"].get(s, "err")) for s in seeds)
        proposed = "n/a (teacher)" if row["key"] == OURS else f"{row['best_set_proposed']}/{row['runs_ok']}"
        label = row["label"] + ("" if row["in_claim"] or row["key"] == OURS else " *(extra)*")
        if row["runs_ok"] < n:
            label += f" ({n - row['runs_ok']} failed: {'; '.join(row['errors'])})"
        lines.append(
            f"| {label} | {row['claimed_calls'] or '—'} | {_fmt(row['mean_student_calls'], '.1f')} | {per_seed} "
            f"| {_fmt(row['mean_helper_calls'], '.1f')} | {_fmt(row['mean_val_score'])} "
            f"| {row['found_best']}/{row['runs_ok']} | {proposed} | {_fmt(row['ours_ratio_mean'])} |"
        )
    claim = summary["claim"]
    verdict = ["", "**Claim** (ours finds every helpful rule and no harmful one with fewer student calls than the "
               "cheapest of the claim's five optimizers at the claimed settings): "
               + ("**holds on every seed**." if claim["holds"] else "**does not hold on every seed**.")]
    for s, v in claim["per_seed"].items():
        found = "yes" if v["ours_found_best"] else "no"
        verdict.append(f"- seed {s}: ours {v['ours_calls']} calls, found best: {found}; cheapest claimed optimizer "
                       f"{v['cheapest']} {v['cheapest_calls']} calls -> {'holds' if v['holds'] else 'fails'}")
    mismatched = [r for r in summary["rows"] if r["matches_claim"] is False]
    for row in mismatched:
        verdict.append(f"- {row['label']}: the claim says {row['claimed_calls']} student calls, measured "
                       f"{', '.join(str(v) for v in row['student_calls'].values())}")
    terminal = "\n".join(lines + verdict)

    detail = ["", "## Per seed", "",
              "| Seed | Optimizer | Student calls | Helper calls | Valset | Own best (logged) | Concept phrases "
              "| Harmful phrases | Neutral phrases | Demos | Best set proposed | Ours / theirs | Wall s |",
              "|---:|---|---:|---:|---:|---:|---|---|---|---:|---|---:|---:|"]
    ratios = {(row["key"], s): r for row in summary["rows"] for s, r in row["ours_ratio_per_seed"].items()}
    for r in records:
        if r.status != "ok":
            detail.append(f"| {r.seed} | {r.label} | {r.student_calls} | {r.helper_calls} | failed: {r.error} "
                          "| | | | | | | | |")
            continue
        detail.append(
            f"| {r.seed} | {r.label} | {r.student_calls} | {r.helper_calls} | {_fmt(r.val_score)} "
            f"| {_fmt(r.logged_best_score) if r.logged_best_score is not None else ''} "
            f"| {', '.join(r.helpful_present) or '—'} | {', '.join(r.harmful_present) or '—'} "
            f"| {', '.join(r.neutral_present) or '—'} | {r.demos} "
            f"| {'n/a' if r.best_set_proposed is None else ('yes' if r.best_set_proposed else 'no')} "
            f"| {_fmt(ratios.get((r.key, r.seed)))} | {r.wall_seconds:.1f} |")
    settings = ["", "## Settings", ""] + [f"- **{row['label']}**: {row['settings']}" for row in summary["rows"]]
    head = [
        "# Student-LM calls per compile: DSPy 3.4 optimizers vs ConceptDistillation (simulated world)", "",
        f"Task: `SimulatedTask.create({N_TRAIN}, {N_VAL}, seed=s, flip_rate={meta['flip_rate']})`, seeds {seeds}; "
        f"program `ChainOfThought(\"question -> answer: float\")`; dspy {meta['versions']['dspy']}, "
        f"gepa {meta['versions']['gepa']}, optuna {meta['versions']['optuna']}; dspy_concept_distill at "
        f"{meta.get('library_revision', 'unknown')}. Caches off; student calls counted "
        "at the student engine during `compile` only; valset score measured afterwards with a fresh student LM. "
        "DSPy's optimizers use the simulated proposer (each proposal holds each helpful rule with p="
        f"{meta['proposer']['p_helpful']} and each distractor with p={meta['proposer']['p_distractor']}, blind to "
        "the prompt); ours uses the scripted teacher. \"Helper calls\" are proposer calls (teacher calls for ours).",
        "",
        "*Ours / theirs* = our student calls divided by that optimizer's on the same seed (below 1: we spend fewer).",
        "",
    ]
    notes = ["", "## Notes", ""] + [f"- {note}" for note in meta["notes"]]
    full = "\n".join(head + lines + verdict + settings + detail + notes) + "\n"
    return full, terminal


NOTES = [
    "The proposer is blind: it never reads the scores, trajectories or feedback in its prompt. Optimizers whose "
    "strength is reading that feedback (GEPA's reflection, COPRO's scored history, SIMBA's trajectory contrast) "
    "become random searches over its proposals here, while ConceptDistillation's scripted teacher names the missing "
    "concept for every mistake it is shown. So 'found best rule set' compares search over blind proposals with an "
    "informed teacher. The student-call counts of COPRO, InferRules and SIMBA are fixed by their settings and do not "
    "depend on the proposer; MIPROv2's vary with its bootstrapping and GEPA's with when its budget runs out.",
    "All proposer engines of one seed share the seed, so the k-th instruction any optimizer receives on that seed "
    "holds the same rules (common random numbers): a seed whose first draws are lucky is lucky for all of them.",
    "The simulated student is deterministic: it ignores temperature, so samples never disagree. SIMBA builds a rule "
    "only from an example whose samples disagree, and its demo-appended candidates (which this student gets wrong: "
    "it reads the first question id in the prompt, the demo's) fall out of its top-k pool, so SIMBA never called the "
    "proposer and returned the baseline. The extra 'sampling noise' row gives the student temperature-dependent "
    "variance to show SIMBA's search when it can work; its call count is the same. MIPROv2 and InferRules were run "
    "0-shot because of the same demo limitation (and InferRules' 200 needs 0 demos: bootstrapping costs extra).",
    "InferRules assigns `signature.instructions` on the signature class that all its candidate copies share, so the "
    "program it returns carries the last candidate's rules, not those of the candidate it scored best; 'Own best "
    "(logged)' is the best candidate score it logged, the valset column what the returned program scores.",
    "The claim's settings are not each optimizer's absolute minimum: COPRO accepts breadth=2, depth=1 (40 calls "
    "here) and InferRules costs num_candidates x |valset| (20 per candidate here); the extra rows show both. At "
    "those settings they are cheaper than ConceptDistillation but rarely reach the best rule set.",
]


def run_benchmark(seeds: Sequence[int], *, flip_rate: float = 0.0, extras: bool = True,
                  num_threads: int = NUM_THREADS) -> tuple[list[OptimizerSpec], list[RunRecord]]:
    """Run every optimizer on every seed with DSPy's caches off."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    specs = SPECS + (EXTRA_SPECS if extras else [])
    records = [run_one(spec, seed, flip_rate=flip_rate, num_threads=num_threads) for seed in seeds for spec in specs]
    return specs, records


def library_revision() -> str:
    """The commit the benchmarked library is at, marked ``+dirty`` when dspy_concept_distill/ has local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "dspy_concept_distill"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _version(name: str) -> str:
    try:
        return version(name)
    except Exception:  # not installed: report it rather than fail
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--flip-rate", type=float, default=0.0, help="the simulated student's answer noise")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; the .md goes next to it")
    parser.add_argument("--extras", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the smallest COPRO and InferRules settings")
    parser.add_argument("--threads", type=int, default=NUM_THREADS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)

    started = time.perf_counter()
    specs, records = run_benchmark(args.seeds, flip_rate=args.flip_rate, extras=args.extras,
                                   num_threads=args.threads)
    summary = summarize(specs, records, args.seeds)
    probe = SimulatedProposerEngine(SimulatedWorld())
    meta = {
        "seeds": list(args.seeds), "flip_rate": args.flip_rate, "n_train": N_TRAIN, "n_val": N_VAL,
        "num_threads": args.threads, "program": 'ChainOfThought("question -> answer: float")',
        "versions": {name: _version(name) for name in ("dspy", "gepa", "optuna", "dspy-concept-distill")},
        "python": platform.python_version(), "library_revision": library_revision(),
        "proposer": {"p_helpful": probe.p_helpful, "p_distractor": probe.p_distractor},
        "total_seconds": round(time.perf_counter() - started, 1), "notes": NOTES,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "settings": {s.key: {"label": s.label, "settings": s.settings,
                                                  "claimed_calls": s.claimed_calls, "in_claim": s.in_claim}
                                          for s in specs},
               "summary": summary, "runs": [asdict(r) for r in records]}
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    full, terminal = markdown(summary, records, meta)
    args.out.with_suffix(".md").write_text(full)
    logger.info("wrote %s and %s in %.1fs", args.out, args.out.with_suffix(".md"), meta["total_seconds"])
    print(terminal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
