"""Per-task summaries, the targets of issue 6 Must 3, and the JSON / Markdown / CSV outputs of the task family
(``family.py``)."""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

LIGHT, MEDIUM, HEAVY = "cd-light", "cd-medium", "cd-heavy"
CD_KEYS = (LIGHT, MEDIUM, HEAVY)
COPRO = "copro"
CALL_RATIO = 0.75  # light may spend at most this share of COPRO (4, 2)'s student calls
HARMFUL_MAX = 0.05
MEDIUM_GAP = 0.02
EPS = 1e-9
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


@dataclass
class RunRecord:
    """What one optimizer did on one task and seed."""

    task: str
    optimizer: str
    seed: int
    status: str = "ok"
    error: str | None = None
    student_calls: int = 0
    helper_calls: int = 0
    oracle_accuracy: float | None = None
    test_accuracy: float | None = None
    helpful_in_force: list[str] = field(default_factory=list)
    harmful_in_force: list[str] = field(default_factory=list)
    neutral_in_force: list[str] = field(default_factory=list)
    pool_helpful: int = 0
    pool_harmful: int = 0
    demos: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float | None = None
    cd_rules: list[dict[str, Any]] = field(default_factory=list)  # every candidate rule: text, kind, status, reason
    source: str = "this run"

    @property
    def recall(self) -> float | None:
        return len(self.helpful_in_force) / self.pool_helpful if self.pool_helpful and self.status == "ok" else None

    @property
    def harmful_rate(self) -> float | None:
        return len(self.harmful_in_force) / self.pool_harmful if self.pool_harmful and self.status == "ok" else None


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and the half-width of its 95% confidence interval (Student's t over seeds; None for one value)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    t = _T95[len(values) - 2] if len(values) - 2 < len(_T95) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def reason_kind(reason: str | None) -> str:
    """A short class for a rule's rejection reason."""
    text = reason or ""
    for needle, kind in (("fixed none of", "screen"), ("dropped in the race", "race (statistical bound)"),
                         ("cannot reach min_gain", "race (exact bound)"), ("below min_gain", "below min_gain"),
                         ("near-duplicate", "duplicate"), ("max_candidates", "max_candidates"),
                         ("leaks", "leak check"), ("not verified", "not verified (budget)")):
        if needle in text:
            return kind
    return re.sub(r"[\d.+-]+", "#", text)[:40] or "?"


def summarize(records: Sequence[RunRecord], tasks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, optimizer): means over seeds, the test accuracy's 95% CI, calls and wall time."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.task, record.optimizer), []).append(record)
    rows = []
    for (task, optimizer), runs in groups.items():
        ok = [r for r in runs if r.status == "ok"]
        test_mean, test_ci = mean_ci([r.test_accuracy for r in ok if r.test_accuracy is not None])
        calls = [r.student_calls for r in ok]
        rows.append({
            "task": task, "optimizer": optimizer, "runs": len(runs), "runs_ok": len(ok),
            "seeds": sorted(r.seed for r in runs), "errors": sorted({r.error for r in runs if r.error}),
            "source": runs[0].source, "task_oracle": tasks.get(task, {}).get("oracle_accuracy"),
            "oracle_accuracy": _mean([r.oracle_accuracy for r in ok]),
            "oracle_per_seed": {r.seed: r.oracle_accuracy for r in ok},
            "test_accuracy": test_mean, "test_ci95": test_ci,
            "helpful_recall": _mean([r.recall for r in ok]), "harmful_acceptance": _mean([r.harmful_rate for r in ok]),
            "student_calls": _mean(calls), "student_calls_min": min(calls, default=None),
            "student_calls_max": max(calls, default=None), "helper_calls": _mean([r.helper_calls for r in ok]),
            "wall_seconds": _mean([r.wall_seconds for r in runs]),
            "cpu_seconds": _mean([r.cpu_seconds for r in runs]),
            "wall_seconds_total": round(sum(r.wall_seconds for r in runs), 2),
            "missed_helpful": (missed_helpful(ok, tasks.get(task, {}).get("pool", []))
                               if optimizer in CD_KEYS or (ok and ok[0].cd_rules) else {}),
        })
    return rows


def missed_helpful(runs: Sequence[RunRecord], pool: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Why helpful pool rules are not in force at the end of CD runs, counted over (run, rule): the reason a
    candidate of that rule was turned down (a measured reason over "duplicate", the later one when there are
    several), or "never proposed". ``pool`` is the task's pool as in ``FamilyTask.describe()``."""
    counts: Counter[str] = Counter()
    for run in runs:
        reasons: dict[int, list[str]] = {}
        for rule in run.cd_rules:
            index = rule.get("pool_rule")
            if index is not None and rule["kind"] == "helpful" and rule["status"] != "accepted":
                reasons.setdefault(index, []).append(reason_kind(rule.get("reason")))
        for index, entry in enumerate(pool):
            if entry["kind"] != "helpful" or entry["rule"] in run.helpful_in_force:
                continue
            kinds = reasons.get(index, [])
            measured = [k for k in kinds if k != "duplicate"]
            counts[(measured or kinds or ["never proposed"])[-1]] += 1
    return dict(counts.most_common())


def targets(rows: Sequence[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 6 Must 3 per task, from the means over seeds, with the shortfall where a target is missed."""
    by = {(r["task"], r["optimizer"]): r for r in rows}
    out = {}
    for task, info in tasks.items():
        light, medium, copro = by.get((task, LIGHT)), by.get((task, MEDIUM)), by.get((task, COPRO))
        dspy_rows = [r for (t, k), r in by.items()
                     if t == task and k not in CD_KEYS and r["oracle_accuracy"] is not None]
        out[task] = {"light_vs_dspy": _light_target(light, copro, dspy_rows),
                     "harmful": _harmful_target([by.get((task, k)) for k in CD_KEYS]),
                     "medium_vs_oracle": _medium_target(medium, info["oracle_accuracy"])}
    return out


def _light_target(light: dict | None, copro: dict | None, dspy_rows: list[dict]) -> dict[str, Any]:
    if light is None or light["oracle_accuracy"] is None or copro is None or not dspy_rows:
        return {"status": "n/a", "detail": "needs cd-light, copro and the DSPy optimizers (run them or --reference)"}
    best = max(dspy_rows, key=lambda r: r["oracle_accuracy"])
    budget = CALL_RATIO * copro["student_calls"]
    short = []
    if light["oracle_accuracy"] < best["oracle_accuracy"] - EPS:
        short.append(f"oracle {light['oracle_accuracy']:.3f} < {best['oracle_accuracy']:.3f} of {best['optimizer']} "
                     f"(-{best['oracle_accuracy'] - light['oracle_accuracy']:.3f})")
    if light["student_calls"] > budget + EPS:
        short.append(f"{light['student_calls']:.0f} student calls > {budget:.0f} (0.75 x COPRO's "
                     f"{copro['student_calls']:.0f})")
    return {"status": "fail" if short else "pass", "detail": "; ".join(short) or
            f"oracle {light['oracle_accuracy']:.3f} >= {best['oracle_accuracy']:.3f} ({best['optimizer']}), "
            f"{light['student_calls']:.0f} <= {budget:.0f} calls", "best_dspy": best["optimizer"],
            "best_dspy_oracle": best["oracle_accuracy"], "call_budget": budget}


def _harmful_target(cd_rows: list[dict | None]) -> dict[str, Any]:
    present = [r for r in cd_rows if r is not None and r["harmful_acceptance"] is not None]
    if not present:
        return {"status": "n/a", "detail": "no CD run (or no harmful rule in the pool)"}
    over = [f"{r['optimizer']} {r['harmful_acceptance']:.0%}" for r in present if r["harmful_acceptance"] > HARMFUL_MAX]
    return {"status": "fail" if over else "pass",
            "detail": ("harmful acceptance > 5%: " + ", ".join(over)) if over else
            ", ".join(f"{r['optimizer']} {r['harmful_acceptance']:.0%}" for r in present)}


def _medium_target(medium: dict | None, oracle: float) -> dict[str, Any]:
    if medium is None or medium["oracle_accuracy"] is None:
        return {"status": "n/a", "detail": "cd-medium not run"}
    gap = oracle - medium["oracle_accuracy"]
    return {"status": "fail" if gap > MEDIUM_GAP + EPS else "pass",
            "detail": f"{medium['oracle_accuracy']:.3f} vs oracle {oracle:.3f} (gap {gap:+.3f})"}


# -- output ---------------------------------------------------------------------------------------------------------
def _f(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def task_table(tasks: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| task | mode | proposer (CD) | predictors | train/val/test | flip | redraw | pool (helpful / harmful / "
             "neutral effects) | baseline | oracle |", "|---|---|---|---:|---|---:|---:|---|---:|---:|"]
    for t in tasks.values():
        kinds = {k: ", ".join(f"{r['effect']:+.2f}" + ("p" if r["field"] == "plan" else "")
                              for r in t["pool"] if r["kind"] == k) or "—" for k in ("helpful", "harmful", "neutral")}
        lines.append(f"| {t['name']} | {t['mode']} | {t['proposer']} | {t['predictors']} | {t['n_train']}/{t['n_val']}/"
                     f"{t['n_test']} | {t['flip_rate']:g} | {_f(t['redraw'], 'g')} | {kinds['helpful']} / "
                     f"{kinds['harmful']} / {kinds['neutral']} | {t['baseline_accuracy']:.2f} | "
                     f"{t['oracle_accuracy']:.2f} |")
    return lines


def results_table(rows: Sequence[dict[str, Any]], task: str) -> list[str]:
    lines = ["| optimizer | oracle acc. | test acc. (95% CI) | helpful recall | harmful accepted | student calls "
             "(min-max) | proposer calls | wall s/run | runs |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in (r for r in rows if r["task"] == task):
        ci = f" ± {r['test_ci95']:.3f}" if r["test_ci95"] is not None else ""
        runs = f"{r['runs_ok']}/{r['runs']}" + ("" if r["source"] == "this run" else f" ({r['source']})")
        if r["errors"]:
            runs += f"; errors: {'; '.join(e[:80] for e in r['errors'])}"
        lines.append(f"| {r['optimizer']} | {_f(r['oracle_accuracy'])} | {_f(r['test_accuracy'])}{ci} | "
                     f"{_f(r['helpful_recall'], '.2f')} | {_f(r['harmful_acceptance'], '.0%')} | "
                     f"{_f(r['student_calls'], '.0f')} ({r['student_calls_min']}-{r['student_calls_max']}) | "
                     f"{_f(r['helper_calls'], '.1f')} | {_f(r['wall_seconds'], '.2f')} | {runs} |")
    return lines


def targets_table(checks: dict[str, dict[str, Any]]) -> list[str]:
    mark = {"pass": "pass", "fail": "**FAIL**", "n/a": "n/a"}
    lines = ["| task | light reaches the best DSPy optimizer with <= 0.75x COPRO's calls | harmful accepted <= 5% "
             "(each CD preset) | medium within 0.02 of oracle |", "|---|---|---|---|"]
    for task, c in checks.items():
        cells = [f"{mark[c[k]['status']]}: {c[k]['detail']}" for k in ("light_vs_dspy", "harmful", "medium_vs_oracle")]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def markdown(payload: dict[str, Any]) -> str:
    meta, tasks, rows, checks = payload["meta"], payload["tasks"], payload["summary"], payload["targets"]
    out = ["# Task family: rule selection across simulated tasks", "",
           f"Command: `{meta['command']}`", "",
           f"dspy {meta['versions'].get('dspy')}, gepa {meta['versions'].get('gepa')}, optuna "
           f"{meta['versions'].get('optuna')}; dspy_concept_distill at {meta['library_revision']}; seeds "
           f"{meta['seeds_label']}; {meta['jobs']} process(es) x {meta['threads']} threads; total wall "
           f"{meta['wall_seconds']:.0f} s. Scripted LMs (not real models), caches off; calls counted at the engines "
           "during compile. *Oracle acc.*: the analytic expected accuracy of the returned program from the rules in "
           "its instructions; *test acc.*: measured on the task's separate test split with a fresh student."
           + (f" ({meta['rendered']}.)" if meta.get("rendered") else ""),
           "", "## Tasks", "", *task_table(tasks), "",
           "Effects are expected-accuracy changes of each pool rule added alone (`p`: acts in the plan predictor). "
           "Descriptions:", "", *[f"- **{t['name']}**: {t['summary']}" for t in tasks.values()],
           "", "## Targets (issue 6 Must 3; means over seeds)", "", *targets_table(checks), "", "## Results per task"]
    for task in tasks:
        out += ["", f"### {task} (baseline {tasks[task]['baseline_accuracy']:.2f}, oracle "
                f"{tasks[task]['oracle_accuracy']:.2f})", "", *results_table(rows, task)]
        missed = [(r["optimizer"], r["missed_helpful"]) for r in rows if r["task"] == task and r["missed_helpful"]]
        if missed:
            out += ["", "Helpful rules not in force at the end, by reason (runs x rules): " + "; ".join(
                f"{k}: " + ", ".join(f"{reason} {n}" for reason, n in m.items()) for k, m in missed)]
    out += ["", "## Time per optimizer (compile only; this run's processes)", "",
            "| optimizer | runs | wall s/run | wall s total | CPU s/run | CPU s total |",
            "|---|---:|---:|---:|---:|---:|"]
    for key, w in payload["wall_by_optimizer"].items():
        cpu = (f"{w['cpu_total'] / w['runs']:.2f} | {w['cpu_total']:.1f}" if w.get("cpu_total") is not None
               else "— | —")
        out.append(f"| {key} | {w['runs']} | {w['mean']:.2f} | {w['total']:.1f} | {cpu} |")
    out += ["", "## Notes", "", *[f"- {note}" for note in meta["notes"]]]
    return "\n".join(out) + "\n"


CSV_FIELDS = ["task", "optimizer", "runs", "runs_ok", "task_oracle", "oracle_accuracy", "test_accuracy", "test_ci95",
              "helpful_recall", "harmful_acceptance", "student_calls", "student_calls_min", "student_calls_max",
              "helper_calls", "wall_seconds", "source"]


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
