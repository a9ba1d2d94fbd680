"""What racing ahead costs across the task family: requests a multi-threaded compile makes beyond the 1-thread
run's, and a check that its decisions are the 1-thread run's (scripted LMs, NOT real models;
``python -m benchmarks speculation``).

With more threads than a first chunk, verification races ahead on threads that would otherwise idle (see
``dspy_concept_distill/racing.py``): later chunks of the candidate in front, candidates behind it against the rules
they are predicted to meet, and the next round's trainset. A prediction that fails leaves requests whose outcomes no
decision uses: those are the cost of racing ahead. A run's requests depend only on the outcomes in submission
order, never on timing, so the scripted LMs here answer at once and the counts are the ones any latency gives.

Per task and preset: the mean extra student requests per compile at each thread count relative to 1 thread (95% CI
over seeds, t interval), the most seen, the extra as a share of the 1-thread run's requests, and whether every rule
got the same status, reason, gain and examples seen, and the returned program the same oracle accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..paths import LOCAL_RESULTS
from ..provenance import library_revision, package_versions
from .family import run_one
from .family_report import mean_ci

DEFAULT_OUT = LOCAL_RESULTS / "speculation"
PRESETS = ("cd-light", "cd-medium")


def _job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    logging.basicConfig(level=logging.ERROR)
    task, preset, seed, threads = job
    record = run_one(task, preset, seed, threads=threads)
    return {"task": task, "preset": preset, "seed": seed, "threads": threads, **{
        k: v for k, v in asdict(record).items()
        if k in ("status", "error", "student_calls", "helper_calls", "oracle_accuracy", "cd_rules")}}


def decisions(run: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r.get("text"), r["pool_rule"], r["status"], r["reason"], r["gain"], r["evaluated_on"])
            for r in run["cd_rules"]]


def summarize(runs: list[dict[str, Any]], threads: list[int]) -> list[dict[str, Any]]:
    by_key = {(r["task"], r["preset"], r["seed"], r["threads"]): r for r in runs}
    rows = []
    for task, preset in dict.fromkeys((r["task"], r["preset"]) for r in runs):
        seeds = sorted({r["seed"] for r in runs if r["task"] == task and r["preset"] == preset})
        for t in threads[1:]:
            pairs = [(by_key[(task, preset, s, threads[0])], by_key[(task, preset, s, t)]) for s in seeds
                     if (task, preset, s, threads[0]) in by_key and (task, preset, s, t) in by_key]
            ok = [(a, b) for a, b in pairs if a["status"] == b["status"] == "ok"]
            extra = [b["student_calls"] - a["student_calls"] for a, b in ok]
            base = [a["student_calls"] for a, _ in ok]
            mean, half = mean_ci(extra) if extra else (math.nan, None)
            half = math.nan if half is None else half
            rows.append({
                "task": task, "preset": preset, "threads": t, "runs": len(ok), "errors": len(pairs) - len(ok),
                "calls_1_thread": statistics.fmean(base) if base else math.nan, "extra_mean": mean,
                "extra_ci": [mean - half, mean + half], "extra_max": max(extra, default=0),
                "extra_share": sum(extra) / sum(base) if base and sum(base) else math.nan,
                "same_decisions": sum(decisions(a) == decisions(b) and a["oracle_accuracy"] == b["oracle_accuracy"]
                                      for a, b in ok),
            })
    return rows


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = ["# What racing ahead costs across the task family (scripted LMs, not real models)", "",
             f"Command: `{meta['command']}`  ", f"Library revision `{meta['library_revision']}`, dspy "
             f"{meta['versions']['dspy']}, Python {meta['python']}; seeds {meta['seeds_label']}; "
             f"{meta['wall_seconds']:.0f} s of runs.", "",
             f"Extra = student requests of a compile at that thread count minus those of the same compile at "
             f"{meta['threads'][0]} thread(s) (requests racing ahead made that no decision used); 95% CI over seeds "
             "(t interval). Same decisions: runs in which every rule got the same status, reason, gain and examples "
             "seen, and the returned program the same oracle accuracy.", "",
             "| task | preset | threads | runs | calls at 1 thread | extra (mean) | 95% CI | most | extra share | "
             "same decisions |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in payload["summary"]:
        lo, hi = r["extra_ci"]
        ci = "n/a" if math.isnan(lo) else f"{lo:+.1f} .. {hi:+.1f}"
        lines.append(f"| {r['task']} | {r['preset']} | {r['threads']} | {r['runs']} | {r['calls_1_thread']:.1f} | "
                     f"{r['extra_mean']:+.1f} | {ci} | {r['extra_max']:+d} | {100 * r['extra_share']:.1f}% | "
                     f"{r['same_decisions']}/{r['runs']} |")
    totals = {}
    for r in payload["summary"]:
        entry = totals.setdefault((r["preset"], r["threads"]), [0, 0.0, 0, 0])
        entry[0] += r["runs"]
        entry[1] += r["extra_share"] * r["calls_1_thread"] * r["runs"]
        entry[2] += r["same_decisions"]
        entry[3] += r["calls_1_thread"] * r["runs"]
    lines += ["", "| preset | threads | runs | extra requests, all tasks | same decisions |",
              "|---|---:|---:|---:|---:|"]
    for (preset, t), (n, extra, same, base) in totals.items():
        lines.append(f"| {preset} | {t} | {n} | {100 * extra / base:.1f}% | {same}/{n} |")
    return "\n".join(lines) + "\n"


def measure(tasks: Sequence[str], presets: Sequence[str], seeds: Sequence[int], threads: Sequence[int], *,
            seeds_label: str, jobs: int, command: str) -> dict[str, Any]:
    """Every (task, preset, seed, thread count) compile, over ``jobs`` processes, and their summary; ``command`` is
    recorded."""
    threads = list(threads)
    work = [(task, preset, seed, t) for task in tasks for preset in presets for seed in seeds for t in threads]
    started = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            runs = list(pool.map(_job, work))
    else:
        runs = [_job(job) for job in work]
    meta = {"command": command, "seeds_label": seeds_label,
            "threads": threads, "wall_seconds": round(time.perf_counter() - started, 1),
            "library_revision": library_revision(), "versions": package_versions("dspy"),
            "python": platform.python_version()}
    return {"meta": meta, "summary": summarize(runs, threads), "runs": runs}


def write(payload: dict[str, Any], out: Path) -> None:
    """``out``.json and ``out``.md."""
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    Path(f"{out}.md").write_text(markdown(payload), encoding="utf-8")
