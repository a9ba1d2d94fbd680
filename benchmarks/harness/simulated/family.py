"""Rule selection across the task family: every optimizer on every simulated task and seed (scripted LMs, NOT
real models), judged by the oracle accuracy of the program it returns (``python -m benchmarks family``).

Per task, optimizer and seed block it reports the oracle (analytic expected) accuracy of the returned program, its
accuracy on the task's separate test split with a 95% CI over seeds, the runs below the baseline (oracle and test
split), ConceptDistillation's valset optimism, helpful-rule recall, harmful or tempting and generic rules kept,
student and proposer/teacher calls (counted at the engines, caches off) and wall time, and checks issue 14's
targets per task and block (``family_report``). Each run is deterministic given its task and seed; runs are spread
over processes. ``reference_records`` fills the rows of DSPy optimizers that were not run from earlier JSONs, when
their task definitions match (DSPy's optimizers do not depend on this library, so their rows stay valid while
ConceptDistillation changes); ``merge`` puts the runs of several results in one.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import dspy

from dspy_concept_distill.testing import normalized

from ..optimizers import OPTIMIZERS, RunContext
from ..paths import LOCAL_RESULTS
from ..provenance import library_revision, package_versions, revision
from .family_report import RunRecord, markdown, summarize, targets_by_block, to_csv
from .runs import captured_output, run_optimizer, score_with
from .tasks import TASKS_BY_NAME, FamilyTask, TaskInstance

logger = logging.getLogger("family")
DEFAULT_OUT = LOCAL_RESULTS / "family"
NOTES = [
    "Diffuse world: an example is right iff z < p(rules), z = the example's fixed latent or, with probability "
    "`redraw` per prompt variant, a fresh hash-uniform draw; p = baseline + the effects of the rules in force. Any "
    "prompt change (rule, demo, or upstream plan or note) is a new variant, so neutral rules re-roll answers too. Flip "
    "noise flips a further share of answers per variant. See benchmarks/harness/simulated/worlds.py.",
    "The blind proposer includes every pool rule in a proposal with the task's `p_rule` (0.4), whatever the prompt "
    "says; on `blind` tasks ConceptDistillation's teacher signature gets it too (rule objects name the rule's "
    "predictor, on misplaced-2pred a random one of the two, and claim 1-2 random mistake numbers). On `teacher` tasks "
    "CD gets the diagnosing scripted teacher (on subgroup-tempting one that proposes the tempting rule first and its "
    "conditional form right after) and DSPy's optimizers the blind proposer. Instructions the blind proposer writes "
    "for a predictor may hold rules of another predictor; they act only where they target.",
    "Rule kinds: helpful, harmful (breaks something; in the issue 6 tasks a tempting rule that also fixes a category "
    "counts as harmful), tempting (subgroup-tempting: fixes a subgroup, breaks another category; net effect near 0), "
    "generic (a plausible, cheap generic rule costing 0.01-0.03) and neutral. Recall, harmful or tempting kept and "
    "generic kept count pool rules in force in the returned program (phrase in the instructions of the predictor "
    "they act in).",
    "On partial-credit the metric is a score in (0, 1): every 'oracle accuracy' of that task is the expected score "
    "(0.175 + 0.65 x the expected accuracy), and its test accuracy is the mean score on the test split.",
    "Below baseline: oracle accuracy below the task's baseline oracle (by more than 1e-4), or test accuracy below the "
    "unchanged program's on the same test split with a fresh student (any prompt change re-draws answers in the "
    "diffuse world, so a program carrying only neutral rules is below the baseline on the test split about half the "
    "time). Valset optimism: reported valset gain (final_score - baseline_score) minus the true gain.",
    "Targets (issue 14 Must 5), per task and seed block: every CD preset returns a program below the baseline "
    "(oracle) in at most 2% of runs, keeps harmful or tempting rules on at most 5% of (run, rule) pairs and at most "
    "0.3 generic rules per run; medium's mean oracle accuracy is at least GEPA light's at no more than 0.6x its mean "
    "student calls, light's at least COPRO (4, 2)'s at no more than 0.75x its calls.",
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
                       pool_harmful=sum(r.kind == "harmful" for r in inst.pool),
                       pool_tempting=sum(r.kind == "tempting" for r in inst.pool),
                       pool_generic=sum(r.kind == "generic" for r in inst.pool))
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
    record.tempting_in_force = [r.text for r in in_force if r.kind == "tempting"]
    record.generic_in_force = [r.text for r in in_force if r.kind == "generic"]
    record.oracle_accuracy = round(inst.expected_accuracy(program), 6)
    record.test_accuracy = round(score_with(program, inst.student_lm(), inst.testset, inst.metric, threads), 6)
    record.demos = sum(len(p.demos) for _, p in program.named_predictors())
    result = getattr(program, "distillation", None)
    if result is not None:
        record.cd_rules = [cd_rule(rule, inst) for rule in result.rules]
        record.valset_baseline, record.valset_final = result.baseline_score, result.final_score


def baseline_test_accuracy(task: str | FamilyTask, seed: int, threads: int = 4) -> float:
    """The test accuracy (mean metric) of the task's unchanged program on the seed's test split, with a fresh
    student: what a returned program is compared with for "below the baseline on the test split"."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    task = TASKS_BY_NAME[task] if isinstance(task, str) else task
    inst = task.build(seed)
    with captured_output():
        return round(score_with(inst.program(), inst.student_lm(), inst.testset, inst.metric, threads), 6)


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


def _baseline_job(job: tuple[str, int, int]) -> tuple[str, int, float]:
    task, seed, threads = job
    return task, seed, baseline_test_accuracy(task, seed, threads)


def _spread(function: Callable[[Any], Any], work: Sequence[Any], processes: int,
            done: Callable[[Any, int], None] = lambda result, n: None) -> list[Any]:
    """``function`` on every item of ``work``, over ``processes`` processes (1: in this process), in the order
    the results come; ``done(result, how_many_so_far)`` after each."""
    results: list[Any] = []
    if processes <= 1:
        for item in work:
            results.append(function(item))
            done(results[-1], len(results))
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        for future in as_completed([pool.submit(function, item) for item in work]):
            results.append(future.result())
            done(results[-1], len(results))
    return results


def run_all(jobs: Sequence[tuple[str, str, int]], *, processes: int, cd_kwargs: dict[str, Any],
            threads: int) -> list[RunRecord]:
    """Every (task, optimizer, seed) job, spread over ``processes`` processes (1: in this process)."""
    work = [(task, optimizer, seed, cd_kwargs, threads) for task, optimizer, seed in jobs]
    records = _spread(_run_job, work, processes, lambda record, n: _log_done(record, n, len(work)))
    names = {f.name for f in fields(RunRecord)}
    done = [RunRecord(**{k: v for k, v in r.items() if k in names}) for r in records]
    order = {job: i for i, job in enumerate(jobs)}
    return sorted(done, key=lambda r: order[(r.task, r.optimizer, r.seed)])


def baseline_tests(pairs: Sequence[tuple[str, int]], *, processes: int, threads: int) -> dict[str, dict[int, float]]:
    """The baseline program's test accuracy for every (task, seed) in ``pairs`` (``baseline_test_accuracy``)."""
    out: dict[str, dict[int, float]] = {}
    for task, seed, accuracy in _spread(_baseline_job, [(t, s, threads) for t, s in sorted(set(pairs))], processes):
        out.setdefault(task, {})[seed] = accuracy
    return out


def _log_done(record: dict[str, Any], done: int, total: int) -> None:
    logger.info("[%d/%d] %s %s seed %d: %s, oracle %s, %d student / %d proposer calls, %.1fs", done, total,
                record["task"], record["optimizer"], record["seed"], record["status"], record["oracle_accuracy"],
                record["student_calls"], record["helper_calls"], record["wall_seconds"])


# -- inputs and outputs -----------------------------------------------------------------------------------------------
def reference_records(paths: Path | Sequence[Path] | None, wanted: set[tuple[str, str, int]],
                      tasks: dict[str, dict[str, Any]]) -> list[RunRecord]:
    """Runs of DSPy optimizers from earlier JSONs for jobs not run now, when the task definitions match (the
    fingerprint stored with the earlier run equals the current task's). A job found in several files is taken from
    the first. A record already marked as a reference keeps its label; others are labelled with the file's
    library revision."""
    if paths is None:
        return []
    out: dict[tuple[str, str, int], RunRecord] = {}
    for path in [paths] if isinstance(paths, Path) else paths:
        payload = json.loads(Path(path).read_text())
        label = f"reference {payload['meta']['library_revision']}"
        for record in records_from_json(payload["runs"], payload["tasks"]):
            key = (record.task, record.optimizer, record.seed)
            same_task = payload["tasks"][record.task]["fingerprint"] == tasks.get(record.task, {}).get("fingerprint")
            if key in wanted and key not in out and not OPTIMIZERS[record.optimizer].is_cd and same_task:
                record.source = record.source if record.source.startswith("reference") else label
                out[key] = record
    return list(out.values())


def measure(task_names: Sequence[str], optimizers: Sequence[str], seeds: Sequence[int], *, seeds_label: str,
            cd_kwargs: dict[str, Any], jobs: int, threads: int, reference: Path | Sequence[Path] | None,
            command: str) -> dict[str, Any]:
    """Run every (task, optimizer, seed) job and summarize them (plus reference rows); ``command`` is recorded."""
    tasks = {name: TASKS_BY_NAME[name].describe() for name in task_names}
    work = sorted([(t, o, s) for t in task_names for o in optimizers for s in seeds],
                  key=lambda j: -TASKS_BY_NAME[j[0]].n_val * TASKS_BY_NAME[j[0]].predictors)
    started = time.perf_counter()
    records = run_all(work, processes=jobs, cd_kwargs=cd_kwargs, threads=threads)
    wall = round(time.perf_counter() - started, 1)
    wanted = {(t, o, s) for t in task_names for o in OPTIMIZERS for s in seeds} - set(work)
    references = [reference] if isinstance(reference, Path) else list(reference or [])
    records += reference_records(references, wanted, tasks)
    baselines = baseline_tests([(r.task, r.seed) for r in records], processes=jobs, threads=threads)
    meta = {
        "command": command, "seeds": list(seeds),
        "seeds_label": seeds_label, "jobs": jobs, "threads": threads, "cd_kwargs": cd_kwargs,
        "reference": ", ".join(str(r) for r in references) or None,
        "wall_seconds": wall, "baseline_seconds": round(time.perf_counter() - started - wall, 1),
        "versions": package_versions("dspy", "gepa", "optuna"),
        "python": platform.python_version(), "library_revision": library_revision(),
        "harness_revision": revision(), "notes": NOTES,
    }
    return assemble(records, tasks, meta, baselines)


def rerender(path: Path, command: str, *, jobs: int = 1, threads: int = 4) -> dict[str, Any]:
    """An earlier result's runs, summarized again by the current report code (the runs are not repeated);
    ``command`` (the one that asked for it) is recorded. Baseline test accuracies the file lacks are measured
    for the tasks whose definitions still match (no optimizer runs)."""
    old = json.loads(path.read_text())
    meta = {**old["meta"], "rendered": f"summaries recomputed from the stored runs by `{command}`"}
    records = records_from_json(old["runs"], old["tasks"])
    return assemble(records, old["tasks"], meta, stored_baselines(old, records, jobs=jobs, threads=threads))


def merge(paths: Sequence[Path], command: str, *, optimizers: Sequence[str] | None = None, jobs: int = 1,
          threads: int = 4) -> dict[str, Any]:
    """The runs of several results in one (e.g. the reference file of DSPy's optimizers), each run keeping where
    it came from: runs of ``this run`` in a part are labelled ``reference <that part's library revision>``. Only
    the runs of ``optimizers`` when given. A task in several parts must have the same fingerprint in each; a
    (task, optimizer, seed) in several parts is taken from the first. ``meta.parts`` keeps each part's command,
    revisions, seeds and wall time."""
    tasks: dict[str, dict[str, Any]] = {}
    records: dict[tuple[str, str, int], RunRecord] = {}
    parts, baselines = [], {}
    for path in paths:
        payload = json.loads(Path(path).read_text())
        for name, info in payload["tasks"].items():
            if name in tasks and tasks[name]["fingerprint"] != info["fingerprint"]:
                raise ValueError(f"task {name} differs between the parts ({path})")
            tasks.setdefault(name, info)
        label = f"reference {payload['meta']['library_revision']}"
        kept: list[RunRecord] = []
        for record in records_from_json(payload["runs"], payload["tasks"]):
            if optimizers is not None and record.optimizer not in optimizers:
                continue
            record.source = label if record.source == "this run" else record.source
            if records.setdefault((record.task, record.optimizer, record.seed), record) is record:
                kept.append(record)
        for task, by_seed in payload.get("baseline_test", {}).items():
            for seed, accuracy in by_seed.items():
                baselines.setdefault(task, {})[int(seed)] = accuracy
        parts.append({"file": str(path), **{k: payload["meta"].get(k) for k in (
            "command", "library_revision", "harness_revision", "seeds_label", "jobs", "threads", "wall_seconds",
            "versions")}, "runs_kept": len(kept), "sources": sorted({r.source for r in kept}),
            "tasks": sorted({r.task for r in kept}, key=list(payload["tasks"]).index)})
    first = json.loads(Path(paths[0]).read_text())["meta"]
    meta = {**first, "command": command, "parts": parts, "seeds": sorted({r.seed for r in records.values()}),
            "seeds_label": "+".join(dict.fromkeys(p["seeds_label"] for p in parts)),
            "library_revision": ", ".join(dict.fromkeys(source.removeprefix("reference ") for p in parts
                                                        for source in p["sources"])),
            "harness_revision": ", ".join(dict.fromkeys(str(p["harness_revision"]) for p in parts)),
            "wall_seconds": round(sum(p["wall_seconds"] or 0 for p in parts), 1), "reference": None}
    meta.pop("rendered", None)
    merged = {"tasks": tasks, "baseline_test": baselines}
    return assemble(list(records.values()), tasks, meta,
                    stored_baselines(merged, list(records.values()), jobs=jobs, threads=threads))


def stored_baselines(payload: dict[str, Any], records: Sequence[RunRecord], *, jobs: int,
                     threads: int) -> dict[str, dict[int, float]]:
    """The baseline test accuracies stored in ``payload``, plus those of its (task, seed) pairs it lacks whose
    task still has the stored definition (measured now)."""
    out = {task: {int(seed): acc for seed, acc in by_seed.items()}
           for task, by_seed in payload.get("baseline_test", {}).items()}
    missing = {(r.task, r.seed) for r in records if r.seed not in out.get(r.task, {})
               and r.task in TASKS_BY_NAME
               and TASKS_BY_NAME[r.task].fingerprint() == payload["tasks"][r.task]["fingerprint"]}
    for task, by_seed in baseline_tests(sorted(missing), processes=jobs, threads=threads).items():
        out.setdefault(task, {}).update(by_seed)
    return out


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


def assemble(records: list[RunRecord], tasks: dict[str, dict[str, Any]], meta: dict[str, Any],
             baselines: dict[str, dict[int, float]] | None = None) -> dict[str, Any]:
    """The payload: meta, tasks, the summary rows per (task, optimizer, seed block), the targets per block, time
    per optimizer, the baseline test accuracies per (task, seed) and every run (each given its baseline's test
    accuracy)."""
    baselines = baselines or {}
    for r in records:
        r.baseline_test_accuracy = baselines.get(r.task, {}).get(r.seed, r.baseline_test_accuracy)
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
    return {"meta": meta, "tasks": tasks, "summary": rows, "targets": targets_by_block(rows, tasks),
            "wall_by_optimizer": wall_by,
            "baseline_test": {t: {str(s): a for s, a in sorted(b.items())} for t, b in sorted(baselines.items())},
            "runs": [asdict(r) for r in records]}


def write(payload: dict[str, Any], base: Path) -> None:
    """``base``.json (one run per line), .md and .csv."""
    base.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({**payload, "runs": "RUNS"}, indent=1, default=str)
    runs = ",\n".join(json.dumps(r, default=str, separators=(",", ":")) for r in payload["runs"])
    base.with_suffix(".json").write_text(head.replace('"RUNS"', "[\n" + runs + "\n]") + "\n")
    base.with_suffix(".md").write_text(markdown(payload))
    base.with_suffix(".csv").write_text(to_csv(payload["summary"]))
