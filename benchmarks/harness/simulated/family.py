"""Rule selection across the task family: every optimizer on every simulated task and seed (scripted LMs, NOT
real models), judged by the oracle accuracy of the program it returns (``python -m benchmarks family``).

Per task and optimizer it reports the oracle (analytic expected) accuracy of the returned program, its accuracy on
the task's separate test split with a 95% CI over seeds, helpful-rule recall, harmful-rule acceptance, student and
proposer/teacher calls (counted at the engines, caches off) and wall time, and checks issue 6's targets per task.
Each run is deterministic given its task and seed; runs are spread over processes. ``reference_records`` fills the
rows of DSPy optimizers that were not run from an earlier JSON, when its task definitions match (DSPy's optimizers
do not depend on this library, so their rows stay valid while ConceptDistillation changes).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import platform
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import dspy

from dspy_concept_distill.testing import normalized

from ..optimizers import OPTIMIZERS, RunContext
from ..paths import LOCAL_RESULTS
from ..provenance import library_revision, package_versions
from .family_report import RunRecord, markdown, summarize, targets, to_csv
from .runs import run_optimizer, score_with
from .tasks import TASKS_BY_NAME, FamilyTask, TaskInstance

logger = logging.getLogger("family")
DEFAULT_OUT = LOCAL_RESULTS / "family"
NOTES = [
    "Diffuse world: an example is right iff z < p(rules), z = the example's fixed latent or, with probability "
    "`redraw` per prompt variant, a fresh hash-uniform draw; p = baseline + the effects of the rules in force. Any "
    "prompt change (rule, demo, or upstream plan) is a new variant, so neutral rules re-roll answers too. Flip noise "
    "flips a further share of answers per variant. See benchmarks/harness/simulated/worlds.py.",
    "The blind proposer includes every pool rule in a proposal with the task's `p_rule` (0.4), whatever the prompt "
    "says; on `blind` tasks ConceptDistillation's teacher signature gets it too (rule objects name the rule's "
    "predictor and claim 1-2 random mistake numbers). On `teacher` tasks CD gets the diagnosing scripted teacher and "
    "DSPy's optimizers the blind proposer. Instructions the blind proposer writes for a predictor may hold rules of "
    "the other predictor; they act only where they target.",
    "Recall and harmful acceptance count pool rules in force in the returned program (phrase in the instructions of "
    "the predictor they act in); harmful = any rule that breaks something (a tempting rule that also fixes a "
    "category counts as harmful).",
    "Targets: light must reach the best DSPy optimizer's mean oracle accuracy with at most 0.75x COPRO (4, 2)'s mean "
    "student calls on the task; every CD preset must keep harmful rules in force on at most 5% of (run, rule) "
    "pairs; medium must come within 0.02 of the task's oracle accuracy.",
]


# -- one run ----------------------------------------------------------------------------------------------------------
def run_one(task: str | FamilyTask, optimizer: str, seed: int, cd_kwargs: dict[str, Any] | None = None,
            threads: int = 4) -> RunRecord:
    """Run one optimizer on one task (a name in ``TASKS_BY_NAME`` or a ``FamilyTask``) and seed, with fresh
    uncached LMs; a failure is recorded, not raised."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    task = TASKS_BY_NAME[task] if isinstance(task, str) else task
    task_name = task.name
    inst = task.build(seed)
    spec = OPTIMIZERS[optimizer]
    student = inst.student_lm()
    helper = inst.cd_teacher_lm() if spec.is_cd else inst.proposer_lm()
    ctx = RunContext(inst.program(), inst.trainset, inst.valset, inst.metric, student, helper, seed, threads,
                     dict(cd_kwargs or {}) if spec.is_cd else {}, feedback_field="answer")
    outcome = run_optimizer(spec, ctx)
    record = RunRecord(task_name, optimizer, seed, student_calls=student.engine.calls,
                       helper_calls=helper.engine.calls, wall_seconds=outcome.wall_seconds,
                       cpu_seconds=outcome.cpu_seconds,
                       pool_helpful=sum(r.kind == "helpful" for r in inst.pool),
                       pool_harmful=sum(r.kind == "harmful" for r in inst.pool))
    if outcome.program is None:
        record.status, record.error = "error", outcome.error
        logger.error("%s %s seed %d failed: %s\n%s", task_name, optimizer, seed, outcome.error, outcome.traceback)
        return record
    judge(record, outcome.program, inst, threads)
    return record


def judge(record: RunRecord, program: dspy.Module, inst: TaskInstance, threads: int) -> None:
    """Fill ``record`` with the oracle and test accuracy of ``program`` and the pool rules in force in it."""
    in_force = inst.in_force(program)
    record.helpful_in_force = [r.text for r in in_force if r.kind == "helpful"]
    record.harmful_in_force = [r.text for r in in_force if r.kind == "harmful"]
    record.neutral_in_force = [r.text for r in in_force if r.kind == "neutral"]
    record.oracle_accuracy = round(inst.expected_accuracy(program), 6)
    record.test_accuracy = round(score_with(program, inst.student_lm(), inst.testset, inst.metric, threads), 6)
    record.demos = sum(len(p.demos) for _, p in program.named_predictors())
    result = getattr(program, "distillation", None)
    if result is not None:
        record.cd_rules = [cd_rule(rule, inst) for rule in result.rules]


def cd_rule(rule: Any, inst: TaskInstance) -> dict[str, Any]:
    """One candidate rule of a ConceptDistillation run: the index of the pool rule it is (by phrase) and that rule's
    kind, its status, reason, gain and how many valset examples it was scored on; its text when it is not the pool
    rule's own wording."""
    text = str(rule.text)
    index = next((i for i, r in enumerate(inst.pool) if r.phrase.lower() in normalized(text)), None)
    out = {"pool_rule": index, "kind": inst.pool[index].kind if index is not None else "other",
           "status": str(getattr(rule.status, "value", rule.status)), "reason": str(rule.reason or ""),
           "gain": rule.gain, "evaluated_on": rule.evaluated_on, "predictor": str(rule.predictor)}
    if index is None or inst.pool[index].text != text:
        out["text"] = text
    return out


def _run_job(job: tuple[str, str, int, dict[str, Any], int]) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asdict(run_one(*job))


def run_all(jobs: Sequence[tuple[str, str, int]], *, processes: int, cd_kwargs: dict[str, Any],
            threads: int) -> list[RunRecord]:
    """Every (task, optimizer, seed) job, spread over ``processes`` processes (1: in this process)."""
    work = [(task, optimizer, seed, cd_kwargs, threads) for task, optimizer, seed in jobs]
    records: list[dict[str, Any]] = []
    if processes <= 1:
        for job in work:
            records.append(_run_job(job))
            _log_done(records[-1], len(records), len(work))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
            for future in as_completed([pool.submit(_run_job, job) for job in work]):
                records.append(future.result())
                _log_done(records[-1], len(records), len(work))
    names = {f.name for f in fields(RunRecord)}
    done = [RunRecord(**{k: v for k, v in r.items() if k in names}) for r in records]
    order = {job: i for i, job in enumerate(jobs)}
    return sorted(done, key=lambda r: order[(r.task, r.optimizer, r.seed)])


def _log_done(record: dict[str, Any], done: int, total: int) -> None:
    logger.info("[%d/%d] %s %s seed %d: %s, oracle %s, %d student / %d proposer calls, %.1fs", done, total,
                record["task"], record["optimizer"], record["seed"], record["status"], record["oracle_accuracy"],
                record["student_calls"], record["helper_calls"], record["wall_seconds"])


# -- inputs and outputs -----------------------------------------------------------------------------------------------
def reference_records(path: Path | None, wanted: set[tuple[str, str, int]],
                      tasks: dict[str, dict[str, Any]]) -> list[RunRecord]:
    """Runs of DSPy optimizers from an earlier JSON for jobs not run now, when the task definitions match."""
    if path is None:
        return []
    payload = json.loads(path.read_text())
    label = f"reference {payload['meta']['library_revision']}"
    out = []
    for record in records_from_json(payload["runs"], payload["tasks"]):
        same_task = payload["tasks"][record.task]["fingerprint"] == tasks.get(record.task, {}).get("fingerprint")
        if (record.task, record.optimizer, record.seed) in wanted and not OPTIMIZERS[record.optimizer].is_cd \
                and same_task:
            record.source = label
            out.append(record)
    return out


def measure(task_names: Sequence[str], optimizers: Sequence[str], seeds: Sequence[int], *, seeds_label: str,
            cd_kwargs: dict[str, Any], jobs: int, threads: int, reference: Path | None,
            command: str) -> dict[str, Any]:
    """Run every (task, optimizer, seed) job and summarize them (plus reference rows); ``command`` is recorded."""
    tasks = {name: TASKS_BY_NAME[name].describe() for name in task_names}
    work = sorted([(t, o, s) for t in task_names for o in optimizers for s in seeds],
                  key=lambda j: -TASKS_BY_NAME[j[0]].n_val * TASKS_BY_NAME[j[0]].predictors)
    started = time.perf_counter()
    records = run_all(work, processes=jobs, cd_kwargs=cd_kwargs, threads=threads)
    wanted = {(t, o, s) for t in task_names for o in OPTIMIZERS for s in seeds} - set(work)
    records += reference_records(reference, wanted, tasks)
    meta = {
        "command": command, "seeds": list(seeds),
        "seeds_label": seeds_label, "jobs": jobs, "threads": threads, "cd_kwargs": cd_kwargs,
        "reference": str(reference) if reference else None,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "versions": package_versions("dspy", "gepa", "optuna"),
        "python": platform.python_version(), "library_revision": library_revision(), "notes": NOTES,
    }
    return assemble(records, tasks, meta)


def rerender(path: Path, command: str) -> dict[str, Any]:
    """An earlier result's runs, summarized again by the current report code (the runs are not repeated);
    ``command`` (the one that asked for it) is recorded."""
    old = json.loads(path.read_text())
    meta = {**old["meta"], "rendered": f"summaries recomputed from the stored runs by `{command}`"}
    return assemble(records_from_json(old["runs"], old["tasks"]), old["tasks"], meta)


def records_from_json(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> list[RunRecord]:
    """``RunRecord``s from stored runs (earlier files named a CD rule's pool rule by its text: now its index)."""
    names = {f.name for f in fields(RunRecord)}
    records = []
    for run in runs:
        record = RunRecord(**{k: v for k, v in run.items() if k in names})
        pool = [entry["rule"] for entry in tasks[record.task]["pool"]]
        for rule in record.cd_rules:
            if isinstance(rule.get("pool_rule"), str):
                rule["pool_rule"] = pool.index(rule["pool_rule"])
            if rule.get("pool_rule") is not None and rule.get("text") == pool[rule["pool_rule"]]:
                del rule["text"]
        records.append(record)
    return records


def assemble(records: list[RunRecord], tasks: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    rows = summarize(records, tasks)
    wall_by: dict[str, dict[str, Any]] = {}
    for r in (r for r in records if r.source == "this run"):
        entry = wall_by.setdefault(r.optimizer, {"runs": 0, "total": 0.0, "cpu_total": 0.0})
        entry["runs"] += 1
        entry["total"] += r.wall_seconds
        entry["cpu_total"] = None if r.cpu_seconds is None or entry["cpu_total"] is None else \
            entry["cpu_total"] + r.cpu_seconds
    for entry in wall_by.values():
        entry["mean"] = entry["total"] / entry["runs"]
    return {"meta": meta, "tasks": tasks, "summary": rows, "targets": targets(rows, tasks),
            "wall_by_optimizer": wall_by, "runs": [asdict(r) for r in records]}


def write(payload: dict[str, Any], base: Path) -> None:
    """``base``.json (one run per line), .md and .csv."""
    base.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({**payload, "runs": "RUNS"}, indent=1, default=str)
    runs = ",\n".join(json.dumps(r, default=str, separators=(",", ":")) for r in payload["runs"])
    base.with_suffix(".json").write_text(head.replace('"RUNS"', "[\n" + runs + "\n]") + "\n")
    base.with_suffix(".md").write_text(markdown(payload))
    base.with_suffix(".csv").write_text(to_csv(payload["summary"]))
