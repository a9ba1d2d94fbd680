"""Speed of the optimizer itself, with scripted LMs (NOT real models) that answer at once or after a set latency
(``python -m benchmarks speed``).

a. Overhead per LM call (instant LM, ``train`` training examples, one thread): a whole ConceptDistillation compile
   (light preset) whose teacher proposes no rule, so the run is phase 1 (the trainset), the valset baseline and the
   teacher's empty replies; against plain ``dspy.Evaluate`` of the same program on the same train + val examples
   in the same process. For both: (wall time - time inside the LM engines) / requests. The engine time (the
   scripted LMs reading prompts and writing replies) is taken out; what remains is DSPy's own work (adapters,
   parsing, LM bookkeeping) plus, for the compile, the optimizer's. ``extra`` is the compile's figure minus
   ``dspy.Evaluate``'s: the optimizer's own cost per call.
b. Parallel efficiency (``latency`` seconds per student request, 40 train / 40 val examples, auto="medium",
   screen_size=0) at each thread count: efficiency = (requests x latency / threads) / wall time, i.e. the share
   of the thread pool's time spent waiting on the LM; 1.0 means no idle thread and no overhead. The teacher answers
   at once unless ``teacher_latency`` is given (its requests then count in the numerator with their latency).
   Each request is also logged with its phase and start/end times, to show where threads sit idle. With a
   ``structure_latency`` each multi-threaded run is repeated at that latency: wall = waves x latency + fixed
   splits its wall time into sequential LM round trips (the critical path, set by the optimizer's phase barriers
   and racing) and time that does not scale with latency (CPU work not hidden behind waiting, late wake-ups on a
   busy machine). ``sigma`` draws each latency from a lognormal with that mean instead (remote models answer in
   varying time).
c. Parallel efficiency across the task family: every task of ``tasks.py`` compiled with a latency-simulating
   student, fixed and lognormal, with efficiency and net efficiency per run (see ``speed_family.py``).
"""

from __future__ import annotations

import cProfile
import json
import os
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.testing import ScriptedTeacherEngine, SimulatedStudentEngine, SimulatedTask, SimulatedWorld

from ..library import booked_phase  # the phase a request is booked under (diagnostics)
from ..paths import LOCAL_RESULTS
from ..provenance import library_revision, package_versions
from .speed_family import Latency, family_markdown, measure_family

DEFAULT_OUT = LOCAL_RESULTS / "speed"


# -- engines ----------------------------------------------------------------------------------------------------------
class _Timed:
    """Mixin for a scripted engine: each request sleeps ``latency`` seconds after the scripted reply is written;
    ``busy_seconds`` sums the wall time spent inside ``complete``, ``cpu_seconds`` the CPU time of the calling
    threads in it, and ``log`` keeps (phase, start, end) per request. Thread-safe."""

    def __init__(self, *args: Any, latency: float = 0.0, sigma: float = 0.0, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latency = latency
        self.delay = Latency(latency, sigma, seed)  # draws each pause (fixed when sigma is 0)
        self.busy_seconds = self.cpu_seconds = 0.0
        self.log: list[tuple[str, float, float]] = []
        self._timing_lock = threading.Lock()

    def complete(self, request: Any) -> Any:
        start, cpu = time.perf_counter(), time.thread_time()
        response = super().complete(request)  # type: ignore[misc]
        cpu = time.thread_time() - cpu
        if self.latency > 0:
            time.sleep(self.delay.draw())
        end = time.perf_counter()
        with self._timing_lock:
            self.busy_seconds += end - start
            self.cpu_seconds += cpu
            self.log.append((booked_phase.get(), start, end))
        return response


class LatencyStudentEngine(_Timed, SimulatedStudentEngine):
    """The simulated world's scripted student (not a real model), answering after ``latency`` seconds."""


class LatencyTeacherEngine(_Timed, ScriptedTeacherEngine):
    """The simulated world's scripted teacher (not a real model), answering after ``latency`` seconds."""


def silent_teacher(latency: float = 0.0) -> LatencyTeacherEngine:
    """A scripted teacher that recognizes no example, so it diagnoses nothing and proposes no rule."""
    return LatencyTeacherEngine(SimulatedWorld(concepts=[], distractors=[]), latency=latency)


def lm(name: str, engine: Any) -> dspy.LM:
    return dspy.LM(f"simulated/{name}", engine=engine, cache=False)


def efficiency(work_seconds: float, threads: int, wall_seconds: float) -> float:
    """(LM waiting time the run needed / threads) / wall time: 1.0 when every thread waits on an LM all along."""
    return work_seconds / threads / wall_seconds if wall_seconds > 0 else 0.0


# -- a. overhead per call ---------------------------------------------------------------------------------------------
def _timed_evaluate(program: dspy.Module, examples: list[dspy.Example], world: SimulatedWorld,
                    threads: int) -> dict[str, Any]:
    engine = LatencyStudentEngine(world)
    with dspy.context(lm=lm("student", engine)):
        start, cpu = time.perf_counter(), time.process_time()
        dspy.Evaluate(devset=examples, metric=world.metric, num_threads=threads, display_progress=False)(program)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return _per_call(wall, cpu, [engine])


def _timed_compile(program: dspy.Module, train: list[dspy.Example], val: list[dspy.Example], world: SimulatedWorld,
                   threads: int, profiler: cProfile.Profile | None = None) -> dict[str, Any]:
    engine, teacher = LatencyStudentEngine(world), silent_teacher()
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=lm("teacher", teacher), auto="light",
                                    num_threads=threads, seed=0)
    with dspy.context(lm=lm("student", engine)):
        if profiler is not None:
            profiler.enable()
        start, cpu = time.perf_counter(), time.process_time()
        optimized = optimizer.compile(program, trainset=train, valset=val)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
    result = optimized.distillation
    if result.student_calls != engine.calls:
        raise RuntimeError(f"ledger {result.student_calls} != engine {engine.calls} student requests")
    return {**_per_call(wall, cpu, [engine, teacher]), "student_requests": engine.calls,
            "teacher_requests": teacher.calls}


def _per_call(wall: float, cpu: float, engines: Sequence[_Timed]) -> dict[str, Any]:
    """Wall and CPU time outside the engines, per request (CPU time: the whole process, less the engines' own)."""
    requests = sum(e.calls for e in engines)  # type: ignore[attr-defined]
    engine_wall, engine_cpu = sum(e.busy_seconds for e in engines), sum(e.cpu_seconds for e in engines)
    return {"wall_s": wall, "engine_s": engine_wall, "cpu_s": cpu, "engine_cpu_s": engine_cpu, "requests": requests,
            "overhead_ms_per_call": 1000 * (wall - engine_wall) / requests,
            "cpu_overhead_ms_per_call": 1000 * (cpu - engine_cpu) / requests}


def measure_overhead(n_train: int, n_val: int, *, threads: int = 1, seed: int = 0, repeats: int = 1,
                     profile: str | None = None) -> dict[str, Any]:
    """Overhead per LM call of a compile against plain ``dspy.Evaluate``, same program and examples (see a.), run
    ``repeats`` times in turn; each figure is the smallest over the repeats (the run least disturbed by other
    processes). With ``profile``, the first compile runs under cProfile and is not counted."""
    world = SimulatedWorld(seed=seed)
    train, val = world.split(n_train, n_val)
    warm_train, warm_val = world.split(20, 10)
    program = dspy.ChainOfThought("question -> answer: float")
    _timed_evaluate(program, warm_train, world, threads)  # warm-up: imports, adapters, first-call caches
    _timed_compile(program, warm_train, warm_val, world, threads)
    if profile:
        profiler = cProfile.Profile()
        _timed_compile(program, train, val, world, threads, profiler)
        profiler.dump_stats(profile)
    runs: dict[str, list[dict[str, Any]]] = {"evaluate": [], "compile": []}
    for _ in range(max(1, repeats)):
        runs["evaluate"].append(_timed_evaluate(program, train + val, world, threads))
        runs["compile"].append(_timed_compile(program, train, val, world, threads))
    out: dict[str, Any] = {"train": n_train, "val": n_val, "threads": threads, "repeats": len(runs["compile"])}
    for name, found in runs.items():
        out[name] = {**found[0], **{k: min(r[k] for r in found) for k in found[0] if k.endswith("_per_call")},
                     "all": found}
    for kind in ("", "cpu_"):
        mine, theirs = out["compile"][f"{kind}overhead_ms_per_call"], out["evaluate"][f"{kind}overhead_ms_per_call"]
        out[f"{kind}extra_ms_per_call"], out[f"{kind}ratio_to_evaluate"] = mine - theirs, mine / theirs
    return out


# -- b. parallel efficiency -------------------------------------------------------------------------------------------
def measure_parallel(threads: int, *, latency: float, teacher_latency: float = 0.0, n_train: int = 40,
                     n_val: int = 40, seed: int = 0, sigma: float = 0.0) -> dict[str, Any]:
    """One medium compile (screen off) at ``threads`` with LMs that take ``latency`` seconds per request (lognormal
    with log-sd ``sigma`` around it for the student when ``sigma`` > 0)."""
    task = SimulatedTask.create(n_train, n_val, seed=seed)
    student = LatencyStudentEngine(task.world, latency=latency, sigma=sigma, seed=seed)
    teacher = LatencyTeacherEngine(task.world, latency=teacher_latency)
    optimizer = ConceptDistillation(metric=task.world.metric, teacher_lm=lm("teacher", teacher), auto="medium",
                                    screen_size=0, num_threads=threads, seed=seed)
    program = dspy.ChainOfThought("question -> answer: float")
    with dspy.context(lm=lm("student", student)):
        start, cpu = time.perf_counter(), time.process_time()
        result = optimizer.compile(program, trainset=task.trainset, valset=task.valset).distillation
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    work = student.delay.slept + teacher.calls * teacher_latency
    return {"threads": threads, "wall_s": wall, "student_requests": student.calls, "teacher_requests": teacher.calls,
            "efficiency": efficiency(work, threads, wall), "cpu_s": cpu,
            "lm_s": student.busy_seconds + teacher.busy_seconds,
            "student_lm_s_per_request": student.busy_seconds / max(1, student.calls),
            "accepted": sorted(r.text for r in result.accepted_rules), "final_score": result.final_score,
            "phases": phase_profile(student.log + teacher.log, start, threads)}


def measure_evaluate_ceiling(threads: int, requests: int, *, latency: float, seed: int = 0) -> dict[str, Any]:
    """The same program run by plain ``dspy.Evaluate`` on ``requests`` examples at ``threads`` with the same latency:
    a workload with no phases, no decisions and nothing to wait for but the LM. Its efficiency is what this machine
    and DSPy's own per-request work allow at that thread count, the ceiling for any optimizer built on DSPy. Best of
    3 runs with more than one thread (single runs at 16+ threads vary with the machine's other work)."""
    world = SimulatedWorld(seed=seed)
    examples, _ = world.split(requests, 1)
    program = dspy.ChainOfThought("question -> answer: float")
    runs = []
    for _ in range(3 if threads > 1 else 1):
        engine = LatencyStudentEngine(world, latency=latency)
        with dspy.context(lm=lm("student", engine)):
            start, cpu = time.perf_counter(), time.process_time()
            dspy.Evaluate(devset=examples, metric=world.metric, num_threads=threads, display_progress=False)(program)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        runs.append({"requests": engine.calls, "wall_s": wall, "cpu_s": cpu,
                     "efficiency": efficiency(engine.calls * latency, threads, wall)})
    return max(runs, key=lambda r: r["efficiency"])


def add_net_efficiency(runs: list[dict[str, Any]], latency: float, teacher_latency: float) -> None:
    """``net_efficiency``: efficiency x (the 1-thread run's LM work / this run's), so requests that speculation adds
    and throws away do not count as useful work; None without a 1-thread run."""
    single = next((r for r in runs if r["threads"] == 1), None)

    def work(run: dict[str, Any]) -> float:
        return run["student_requests"] * latency + run["teacher_requests"] * teacher_latency

    for run in runs:
        run["net_efficiency"] = None if single is None else run["efficiency"] * work(single) / work(run)


def phase_profile(log: Sequence[tuple[str, float, float]], start: float, threads: int) -> list[dict[str, Any]]:
    """Per stretch of consecutive requests booked under one phase (in start order): its requests, wall span, mean
    LM requests in flight, and the thread-seconds left idle during it (span x threads - LM time)."""
    stretches: list[dict[str, Any]] = []
    for name, begin, end in sorted(log, key=lambda r: r[1]):
        if stretches and stretches[-1]["phase"] == name:
            s = stretches[-1]
            s["requests"] += 1
            s["end"] = max(s["end"], end)
            s["lm_s"] += end - begin
        else:
            stretches.append({"phase": name, "requests": 1, "start": begin, "end": end, "lm_s": end - begin})
    out = []
    for s in stretches:
        span = s["end"] - s["start"]
        out.append({"phase": s["phase"], "requests": s["requests"], "from_s": round(s["start"] - start, 4),
                    "span_s": round(span, 4), "in_flight": round(s["lm_s"] / span, 2) if span > 0 else None,
                    "idle_thread_s": round(max(0.0, span * threads - s["lm_s"]), 4)})
    return out


# -- output -----------------------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    lines = ["# Speed of the optimizer (scripted LMs, not real models)", "",
             f"Command: `{report['command']}`  ", f"dspy {report['versions']['dspy']}, library revision "
             f"`{report['revision']}`, Python {report['python']}, {report['cpus']} CPUs, load average at start "
             f"{report['load_average_at_start']} (other work on the machine slows wall times).", ""]
    if (o := report.get("overhead")) is not None:
        lines += _overhead_markdown(o)
    if report.get("parallel"):
        lines += _parallel_markdown(report)
    if report.get("family"):
        lines += family_markdown(report["family"])
    return "\n".join(lines) + "\n"


def _overhead_markdown(o: dict[str, Any]) -> list[str]:
    return [f"## a. Overhead per LM call ({o['train']} train + {o['val']} val examples, instant LM, "
            f"{o['threads']} thread)", "",
            "overhead = (time - time inside the LM engines) / requests, in wall time and in CPU time (the CPU "
            f"figure is steadier on a shared machine); best of {o['repeats']} runs of each, taken in turn "
            "(every run in the JSON).", "",
            "| run | requests | wall s | overhead ms/call | CPU s | CPU overhead ms/call |",
            "|---|---:|---:|---:|---:|---:|",
            _overhead_row("ConceptDistillation compile (light, teacher proposes nothing)", o["compile"]),
            _overhead_row("dspy.Evaluate, same program and examples", o["evaluate"]), "",
            f"Optimizer's own cost (compile - Evaluate): **{o['extra_ms_per_call']:.3f} ms per call** wall, "
            f"{o['cpu_extra_ms_per_call']:.3f} ms CPU; compile / Evaluate overhead ratio "
            f"{o['ratio_to_evaluate']:.2f} wall, {o['cpu_ratio_to_evaluate']:.2f} CPU. Target: under 1 ms per "
            "call.", ""]


def _parallel_markdown(report: dict[str, Any]) -> list[str]:
    p, runs = report["parallel_settings"], report["parallel"]
    lines = [f"## b. Parallel efficiency ({p['train']} train / {p['val']} val, auto=medium, screen_size=0, "
             f"student latency {p['latency'] * 1000:g} ms{_sigma(p)}, teacher latency "
             f"{p['teacher_latency'] * 1000:g} ms)",
             "",
             f"Multi-threaded runs: the fastest of {p.get('repeats', 1)} (every wall time in the JSON). "
             "efficiency = (requests x latency / threads) / wall time; net efficiency counts only the requests of the "
             "1-thread run (speculative requests thrown away are not useful work). LM ms/request: measured time "
             "inside the student engine (the latency plus the scripted reply and any late wake-up). CPU share = "
             "process CPU time / wall time (DSPy's Python work holds the GIL: near 1, the run is CPU-bound).", "",
             "dspy.Evaluate ceiling: the efficiency of plain `dspy.Evaluate` running as many requests of the same "
             "program at the same thread count and latency in the same process (no phases, nothing to decide): "
             "what this machine and DSPy's own per-request Python work (which holds the GIL) allow at all.", "",
             "| threads | student requests | teacher requests | wall s | efficiency | net efficiency | "
             "dspy.Evaluate ceiling | LM ms/request | CPU share | final score | accepted |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['threads']} | {r['student_requests']} | {r['teacher_requests']} | {r['wall_s']:.2f} | "
              f"{r['efficiency']:.2f} | {_fmt(r.get('net_efficiency'))} | {_ceiling(r)} | "
              f"{1000 * r['student_lm_s_per_request']:.1f} | {r['cpu_s'] / r['wall_s']:.2f} | {r['final_score']:.3f} | "
              f"{len(r['accepted'])} |" for r in runs]
    same = len({tuple(r["accepted"]) for r in runs}) == 1
    lines += ["", f"Accepted rules identical at every thread count: {'yes' if same else 'NO'}. "
              "Target: efficiency >= 0.85 at 16 threads.", ""]
    if structure := report.get("structure"):
        lines += [f"Critical path, from a second run at {structure['latency'] * 1000:g} ms: waves = (wall at "
                  f"{structure['latency'] * 1000:g} ms - wall at {p['latency'] * 1000:g} ms) / latency difference "
                  "(sequential LM round trips), fixed = the rest of the wall time at "
                  f"{p['latency'] * 1000:g} ms (CPU work not hidden behind waiting, late wake-ups); ideal waves = "
                  "requests / threads. Structural efficiency = ideal / waves.", "",
                  "| threads | waves | ideal waves | structural efficiency | fixed s |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['threads']} | {r['waves']:.1f} | {r['ideal_waves']:.1f} | {r['structural_efficiency']:.2f} | "
                  f"{r['fixed_s']:.2f} |" for r in structure["runs"]]
        lines.append("")
    shown = next((r for r in runs if r["threads"] == 16), runs[-1])
    lines += [f"Where threads wait at {shown['threads']} threads (stretches of one phase, in time order):", "",
              "| phase | requests | from s | span s | requests in flight | idle thread-s |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['phase']} | {s['requests']} | {s['from_s']:.3f} | {s['span_s']:.3f} | {s['in_flight']} | "
              f"{s['idle_thread_s']:.2f} |" for s in shown["phases"]]
    return lines


def critical_path(first: dict[str, Any], second: dict[str, Any], latencies: tuple[float, float]) -> dict[str, Any]:
    """Sequential LM round trips of a run (``waves``) and the wall time that does not scale with latency
    (``fixed_s``), from the same run at two latencies: wall = waves x latency + fixed."""
    (l1, l2), requests = latencies, (first["student_requests"] + second["student_requests"]) / 2
    waves = (second["wall_s"] - first["wall_s"]) / (l2 - l1)
    ideal = requests / first["threads"]
    return {"threads": first["threads"], "waves": waves, "ideal_waves": ideal, "fixed_s": first["wall_s"] - waves * l1,
            "structural_efficiency": ideal / waves if waves > 0 else 0.0}


def _ceiling(run: dict[str, Any]) -> str:
    ceiling = run.get("evaluate_ceiling")
    return "n/a" if ceiling is None else f"{ceiling['efficiency']:.2f}"


def _sigma(settings: dict[str, Any]) -> str:
    sigma = settings.get("sigma") or 0.0
    return f" (lognormal, log-sd {sigma:g})" if sigma else ""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _overhead_row(name: str, r: dict[str, Any]) -> str:
    wall, cpu = min(x["wall_s"] for x in r["all"]), min(x["cpu_s"] for x in r["all"])
    return (f"| {name} | {r['requests']} | {wall:.2f} | {r['overhead_ms_per_call']:.3f} | {cpu:.2f} | "
            f"{r['cpu_overhead_ms_per_call']:.3f} |")


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report), encoding="utf-8")


def best_parallel(threads: int, repeats: int, **kwargs: Any) -> dict[str, Any]:
    """``measure_parallel`` ``repeats`` times; the run with the shortest wall time (the one least disturbed by other
    processes), with every wall time kept in ``walls_s``. The runs make the same requests every time."""
    runs = [measure_parallel(threads, **kwargs) for _ in range(max(1, repeats))]
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "walls_s": [r["wall_s"] for r in runs]}


def measure_structure(runs: list[dict[str, Any]], *, structure_latency: float, latency: float,
                      teacher_latency: float, n_train: int, n_val: int, seed: int, sigma: float) -> dict[str, Any]:
    """Each multi-threaded run again at ``structure_latency``, to split its wall time into waves and fixed time."""
    out = []
    for run in runs:
        if run["threads"] == 1:
            continue
        again = measure_parallel(run["threads"], latency=structure_latency, teacher_latency=teacher_latency,
                                 n_train=n_train, n_val=n_val, seed=seed, sigma=sigma)
        out.append({**critical_path(run, again, (latency, structure_latency)), "second_run": again})
    return {"latency": structure_latency, "runs": out}


def measure(*, command: str, overhead: dict[str, Any] | None, parallel: dict[str, Any] | None,
            family: dict[str, Any] | None) -> dict[str, Any]:
    """The report of the cases asked for (None leaves a case out): ``overhead`` holds ``measure_overhead``'s
    arguments; ``parallel`` the thread counts (``threads``), ``latency``, ``teacher_latency``, ``repeats``,
    ``train``, ``val``, ``seed``, ``sigma`` and ``structure_latency`` (0: no second run); ``family`` the arguments
    of ``measure_family``. ``command`` is recorded."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    report: dict[str, Any] = {
        "command": command, "revision": library_revision(),
        "versions": package_versions("dspy", "litellm"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
        "note": "scripted LMs (not real models); see the module docstring for definitions",
    }
    if overhead is not None:
        report["overhead"] = measure_overhead(**overhead)
    if parallel is not None:
        p = parallel
        report["parallel_settings"] = {"train": p["train"], "val": p["val"], "latency": p["latency"],
                                       "teacher_latency": p["teacher_latency"], "repeats": p["repeats"],
                                       "sigma": p["sigma"]}
        report["parallel"] = runs = [
            best_parallel(t, p["repeats"] if t > 1 else 1, latency=p["latency"], teacher_latency=p["teacher_latency"],
                          n_train=p["train"], n_val=p["val"], seed=p["seed"], sigma=p["sigma"])
            for t in p["threads"]]
        add_net_efficiency(runs, p["latency"], p["teacher_latency"])
        for run in runs:
            run["evaluate_ceiling"] = measure_evaluate_ceiling(run["threads"], run["student_requests"],
                                                               latency=p["latency"], seed=p["seed"])
        if p["structure_latency"]:
            report["structure"] = measure_structure(
                runs, structure_latency=p["structure_latency"], latency=p["latency"],
                teacher_latency=p["teacher_latency"], n_train=p["train"], n_val=p["val"], seed=p["seed"],
                sigma=p["sigma"])
    if family is not None:
        report["family"] = measure_family(**family)
    return report
