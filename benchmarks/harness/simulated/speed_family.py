"""c. Parallel efficiency across the task family (scripted LMs, NOT real models): part of the speed benchmark
(``speed.py``, ``python -m benchmarks speed``).

The parallel case of speed.py runs one world, where the racer's predictions come true. Here every task of the
family (``tasks.py``: concept and diffuse effects, noise, 1 and 2 predictors, valsets of 20 to 100,
blind and diagnosing proposers) is compiled at ``threads`` with a student that sleeps ``latency`` seconds per
request, fixed (sigma 0) or drawn from a lognormal with that mean and log-sd ``sigma`` (remote models answer in
varying time). Per run:

- efficiency = (student LM time / threads) / wall time;
- net efficiency = efficiency x (requests of the same compile at 1 thread / requests at ``threads``): only the
  work a 1-thread run also does counts as useful (the 1-thread counts come from instant runs: a run's requests
  do not depend on timing).
"""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import dspy

from ..optimizers import OPTIMIZERS, RunContext
from .family_report import mean_ci
from .runs import run_optimizer
from .tasks import TASKS_BY_NAME


class Latency:
    """Pauses of a latency-simulating engine: ``latency`` seconds, or lognormal with that mean and log-sd ``sigma``
    from a seeded generator; ``slept`` sums the pauses drawn. Thread-safe."""

    def __init__(self, latency: float, sigma: float = 0.0, seed: int = 0) -> None:
        self.latency, self.sigma = latency, sigma
        self.slept = 0.0
        self._rng, self._lock = random.Random(seed), threading.Lock()

    def draw(self) -> float:
        with self._lock:
            pause = self.latency
            if self.sigma > 0:
                pause *= self._rng.lognormvariate(0.0, self.sigma) / math.exp(self.sigma ** 2 / 2)
            self.slept += pause
            return pause


def delay(engine: Any, latency: float, sigma: float = 0.0, seed: int = 0) -> Latency:
    """Make ``engine`` (a scripted engine) sleep a drawn pause after each reply; replaces ``complete`` on the
    instance only."""
    pauses, inner = Latency(latency, sigma, seed), engine.complete

    def complete(request: Any) -> Any:
        response = inner(request)
        time.sleep(pauses.draw())
        return response

    engine.complete = complete
    return pauses


def compile_once(task: str, preset: str, seed: int, threads: int, latency: float = 0.0,
                 sigma: float = 0.0) -> dict[str, Any]:
    """One ConceptDistillation compile of a family task with fresh, uncached LMs."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    inst = TASKS_BY_NAME[task].build(seed)
    student = inst.student_lm()
    pauses = delay(student.engine, latency, sigma, seed) if latency > 0 else None
    ctx = RunContext(inst.program(), inst.trainset, inst.valset, inst.metric, student, inst.cd_teacher_lm(), seed,
                     threads, {}, feedback_field="answer")
    start = time.perf_counter()
    outcome = run_optimizer(OPTIMIZERS[preset], ctx)
    wall = time.perf_counter() - start
    if outcome.program is None:
        raise RuntimeError(f"{task} {preset} seed {seed} at {threads} threads failed: {outcome.error}")
    return {"wall_s": wall, "requests": student.engine.calls, "lm_s": pauses.slept if pauses else 0.0}


def measure_family(tasks: Sequence[str], presets: Sequence[str], seeds: Sequence[int], threads: int,
                   latency: float, sigmas: Sequence[float]) -> dict[str, Any]:
    runs = []
    for preset in presets:
        for task in tasks:
            for seed in seeds:
                single = compile_once(task, preset, seed, 1)["requests"]
                for sigma in sigmas:
                    timed = compile_once(task, preset, seed, threads, latency, sigma)
                    eff = timed["lm_s"] / threads / timed["wall_s"]
                    runs.append({"task": task, "preset": preset, "seed": seed, "sigma": sigma, "threads": threads,
                                 "requests_1_thread": single, **timed, "efficiency": eff,
                                 "net_efficiency": eff * single / timed["requests"]})
    return {"threads": threads, "latency": latency, "sigmas": list(sigmas), "seeds": list(seeds), "runs": runs,
            "summary": summarize(runs)}


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% interval (``family_report.mean_ci``: Student's t); NaN bounds for one value."""
    mean, half = mean_ci(values)
    return (mean, math.nan, math.nan) if half is None else (mean, mean - half, mean + half)


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for preset, sigma in dict.fromkeys((r["preset"], r["sigma"]) for r in runs):
        mine = [r for r in runs if r["preset"] == preset and r["sigma"] == sigma]
        eff, net = _mean_ci([r["efficiency"] for r in mine]), _mean_ci([r["net_efficiency"] for r in mine])
        extra = sum(r["requests"] - r["requests_1_thread"] for r in mine) / sum(r["requests_1_thread"] for r in mine)
        rows.append({"preset": preset, "sigma": sigma, "runs": len(mine), "efficiency": eff[0],
                     "efficiency_ci": eff[1:], "net_efficiency": net[0], "net_efficiency_ci": net[1:],
                     "lowest_net": min(r["net_efficiency"] for r in mine),
                     "lowest_task": min(mine, key=lambda r: r["net_efficiency"])["task"], "extra_requests": extra})
    return rows


def family_markdown(report: dict[str, Any]) -> list[str]:
    lines = [f"## c. Parallel efficiency across the task family ({report['threads']} threads, student latency "
             f"{report['latency'] * 1000:g} ms fixed or lognormal with log-sd sigma, ConceptDistillation presets "
             "at their defaults)", "",
             "Every task of the family (benchmarks/harness/simulated/tasks.py), seeds "
             + ", ".join(map(str, report["seeds"])) + ". "
             "efficiency = (student LM time / threads) / wall time; net efficiency counts only the requests the same "
             "compile makes at 1 thread. 95% CI over runs (t interval). Extra requests: made at "
             f"{report['threads']} threads beyond the 1-thread run's, all runs together.", "",
             "| preset | sigma | runs | efficiency | 95% CI | net efficiency | 95% CI | lowest net (task) | "
             "extra requests |", "|---|---:|---:|---:|---|---:|---|---|---:|"]
    for r in report["summary"]:
        lines.append(f"| {r['preset']} | {r['sigma']:g} | {r['runs']} | {r['efficiency']:.2f} | "
                     f"{_ci(r['efficiency_ci'])} | {r['net_efficiency']:.2f} | {_ci(r['net_efficiency_ci'])} | "
                     f"{r['lowest_net']:.2f} ({r['lowest_task']}) | {100 * r['extra_requests']:.1f}% |")
    lines += ["", "Per task (mean over seeds):", "", "| task | preset | sigma | efficiency | net efficiency | "
              "requests at 1 thread | requests |", "|---|---|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for run in report["runs"]:
        groups.setdefault((run["task"], run["preset"], run["sigma"]), []).append(run)
    for (task, preset, sigma), mine in groups.items():
        lines.append(f"| {task} | {preset} | {sigma:g} | {statistics.fmean(r['efficiency'] for r in mine):.2f} | "
                     f"{statistics.fmean(r['net_efficiency'] for r in mine):.2f} | "
                     f"{statistics.fmean(r['requests_1_thread'] for r in mine):.0f} | "
                     f"{statistics.fmean(r['requests'] for r in mine):.0f} |")
    return [*lines, ""]


def _ci(bounds: Sequence[float]) -> str:
    low, high = bounds
    return "n/a" if math.isnan(low) else f"{low:.2f} .. {high:.2f}"
