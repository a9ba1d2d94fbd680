"""Per-task summaries (per seed block), the targets of issue 14 Must 5, and the JSON / Markdown / CSV outputs of the
task family (``family.py``).

Every summary row is one (task, optimizer, seed block): seeds 0-9 are the tuning block, 10-29 the held-out block
(``BLOCKS``; other seeds form a block of their own), so a run over seeds 0-29 reports both, separately, and the
targets are checked per block. Beside the oracle and test accuracy, a row says how often the returned program is
below the baseline on unseen data (oracle and test split), how much ConceptDistillation's reported valset gain
overstates the true gain (*valset optimism*), and how many harmful or tempting (per (run, rule) pair) and cheap
generic (per run) rules the returned program keeps.
"""

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
COPRO, GEPA = "copro", "gepa"
LIGHT_CALL_RATIO = 0.75  # light may spend at most this share of COPRO (4, 2)'s student calls
MEDIUM_CALL_RATIO = 0.6  # medium may spend at most this share of GEPA light's student calls
BELOW_MAX = 0.02  # share of runs whose returned program is below the baseline (oracle), each CD preset
BAD_MAX = 0.05  # harmful or tempting rules kept, share of (run, rule) pairs, each CD preset
GENERIC_MAX = 0.3  # cheap generic rules kept per run, each CD preset
BELOW_TOL = 1e-4  # the baseline in the task description is rounded to 4 digits
EPS = 1e-9
BLOCKS = (("0-9", "tuning", range(0, 10)), ("10-29", "held out", range(10, 30)))
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def seed_block(seed: int) -> str:
    """The block a seed is reported in: ``0-9`` (tuning), ``10-29`` (held out), else ``other``."""
    return next((label for label, _, seeds in BLOCKS if seed in seeds), "other")


def block_title(block: str) -> str:
    return next((f"seeds {label} ({what})" for label, what, _ in BLOCKS if label == block), "other seeds")


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
    tempting_in_force: list[str] = field(default_factory=list)
    generic_in_force: list[str] = field(default_factory=list)
    pool_tempting: int = 0
    pool_generic: int = 0
    valset_baseline: float | None = None  # ConceptDistillation's reported valset scores (program.distillation)
    valset_final: float | None = None
    baseline_test_accuracy: float | None = None  # the unchanged program on the same test split

    @property
    def recall(self) -> float | None:
        return len(self.helpful_in_force) / self.pool_helpful if self.pool_helpful and self.status == "ok" else None

    @property
    def harmful_rate(self) -> float | None:
        return len(self.harmful_in_force) / self.pool_harmful if self.pool_harmful and self.status == "ok" else None

    @property
    def bad_kept(self) -> int:
        """Harmful or tempting pool rules in force in the returned program."""
        return len(self.harmful_in_force) + len(self.tempting_in_force)

    @property
    def bad_pool(self) -> int:
        return self.pool_harmful + self.pool_tempting

    @property
    def reported_gain(self) -> float | None:
        """ConceptDistillation's reported valset gain: ``final_score - baseline_score`` of ``program.distillation``."""
        if self.valset_final is None or self.valset_baseline is None:
            return None
        return self.valset_final - self.valset_baseline

    def below_baseline(self, baseline_oracle: float) -> bool:
        """Whether the returned program's oracle accuracy is below the baseline's."""
        return self.oracle_accuracy is not None and self.oracle_accuracy < baseline_oracle - BELOW_TOL

    @property
    def below_baseline_test(self) -> bool | None:
        """Whether the returned program scores below the unchanged program on the test split (None: unknown)."""
        if self.test_accuracy is None or self.baseline_test_accuracy is None:
            return None
        return self.test_accuracy < self.baseline_test_accuracy - EPS

    def optimism(self, baseline_oracle: float) -> float | None:
        """Reported valset gain minus the true gain (oracle of the returned program minus the baseline's)."""
        if self.reported_gain is None or self.oracle_accuracy is None:
            return None
        return self.reported_gain - (self.oracle_accuracy - baseline_oracle)


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
    """One row per (task, optimizer, seed block): means over seeds, the test accuracy's 95% CI, runs below the
    baseline, valset optimism, harmful/tempting and generic rules kept, calls and wall time."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.task, record.optimizer, seed_block(record.seed)), []).append(record)
    rows = []
    order = {label: i for i, (label, _, _) in enumerate(BLOCKS)}
    for (task, optimizer, block), runs in sorted(groups.items(), key=lambda item: order.get(item[0][2], 99)):
        info = tasks.get(task, {})
        base = info.get("baseline_accuracy")
        ok = [r for r in runs if r.status == "ok"]
        test_mean, test_ci = mean_ci([r.test_accuracy for r in ok if r.test_accuracy is not None])
        calls = [r.student_calls for r in ok]
        tested = [r for r in ok if r.below_baseline_test is not None]
        below = [r for r in ok if base is not None and r.below_baseline(base)]
        optimism = [r.optimism(base) for r in ok if base is not None and r.optimism(base) is not None]
        optimism_mean, optimism_ci = mean_ci(optimism)
        reported = [r for r in ok if r.reported_gain is not None]
        pairs = sum(r.bad_pool for r in ok)
        generic_pool = max((r.pool_generic for r in ok), default=0)
        rows.append({
            "task": task, "optimizer": optimizer, "block": block, "runs": len(runs), "runs_ok": len(ok),
            "seeds": sorted(r.seed for r in runs), "errors": sorted({r.error for r in runs if r.error}),
            "source": runs[0].source, "task_oracle": info.get("oracle_accuracy"), "task_baseline": base,
            "oracle_accuracy": _mean([r.oracle_accuracy for r in ok]),
            "oracle_per_seed": {r.seed: r.oracle_accuracy for r in ok},
            "test_accuracy": test_mean, "test_ci95": test_ci,
            "baseline_test_accuracy": _mean([r.baseline_test_accuracy for r in ok]),
            "below_baseline_runs": len(below) if base is not None else None,
            "below_baseline_share": len(below) / len(ok) if ok and base is not None else None,
            "below_baseline_test_runs": sum(bool(r.below_baseline_test) for r in tested) if tested else None,
            "below_baseline_test_of": len(tested),
            "below_baseline_test_share": (sum(bool(r.below_baseline_test) for r in tested) / len(tested)
                                          if tested else None),
            "valset_reported_gain": _mean([r.reported_gain for r in reported]),
            "true_gain": _mean([r.oracle_accuracy - base for r in reported]) if reported and base is not None
            else None,
            "valset_optimism": optimism_mean, "valset_optimism_ci95": optimism_ci,
            "valset_optimism_runs": len(optimism),
            "helpful_recall": _mean([r.recall for r in ok]), "harmful_acceptance": _mean([r.harmful_rate for r in ok]),
            "harmful_or_tempting_kept": sum(r.bad_kept for r in ok) if pairs else None,
            "harmful_or_tempting_pairs": pairs,
            "harmful_or_tempting_share": sum(r.bad_kept for r in ok) / pairs if pairs else None,
            "generic_per_run": _mean([len(r.generic_in_force) for r in ok]) if generic_pool else None,
            "pool_generic": generic_pool,
            "student_calls": _mean(calls), "student_calls_min": min(calls, default=None),
            "student_calls_max": max(calls, default=None), "helper_calls": _mean([r.helper_calls for r in ok]),
            "wall_seconds": _mean([r.wall_seconds for r in runs]),
            "cpu_seconds": _mean([r.cpu_seconds for r in runs]),
            "wall_seconds_total": round(sum(r.wall_seconds for r in runs), 2),
            "missed_helpful": (missed_helpful(ok, info.get("pool", []))
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


def targets_by_block(rows: Sequence[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``targets`` for every seed block present in ``rows`` (tuning first)."""
    blocks = dict.fromkeys(r.get("block", "0-9") for r in rows)
    return {block: targets([r for r in rows if r.get("block", "0-9") == block], tasks) for block in blocks}


def targets(rows: Sequence[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Issue 14 Must 5 per task, from the rows of one seed block, with the shortfall where a target is missed."""
    by = {(r["task"], r["optimizer"]): r for r in rows}
    out = {}
    for task in tasks:
        cd_rows = [by[(task, k)] for k in CD_KEYS if (task, k) in by]
        out[task] = {"below_baseline": _below_target(cd_rows),
                     "harmful_or_tempting": _bad_target(cd_rows),
                     "medium_vs_gepa": _versus(by.get((task, MEDIUM)), by.get((task, GEPA)), MEDIUM_CALL_RATIO,
                                               "GEPA light"),
                     "light_vs_copro": _versus(by.get((task, LIGHT)), by.get((task, COPRO)), LIGHT_CALL_RATIO,
                                               "COPRO (4, 2)"),
                     "generic": _generic_target(cd_rows)}
    return out


def _status(failures: list[str], passes: str) -> dict[str, Any]:
    return {"status": "fail" if failures else "pass", "detail": "; ".join(failures) or passes}


def _below_target(cd_rows: list[dict]) -> dict[str, Any]:
    present = [r for r in cd_rows if r.get("below_baseline_share") is not None]
    if not present:
        return {"status": "n/a", "detail": "no CD run"}
    over = [f"{r['optimizer']} {r['below_baseline_runs']}/{r['runs_ok']} = {r['below_baseline_share']:.0%} > "
            f"{BELOW_MAX:.0%}" for r in present if r["below_baseline_share"] > BELOW_MAX + EPS]
    return _status(over, ", ".join(f"{r['optimizer']} {r['below_baseline_runs']}/{r['runs_ok']}" for r in present))


def _bad_target(cd_rows: list[dict]) -> dict[str, Any]:
    present = [r for r in cd_rows if r.get("harmful_or_tempting_share") is not None]
    if not present:
        return {"status": "n/a", "detail": "no CD run (or no harmful or tempting rule in the pool)"}
    over = [f"{r['optimizer']} {r['harmful_or_tempting_kept']}/{r['harmful_or_tempting_pairs']} = "
            f"{r['harmful_or_tempting_share']:.0%} > {BAD_MAX:.0%}" for r in present
            if r["harmful_or_tempting_share"] > BAD_MAX + EPS]
    return _status(over, ", ".join(f"{r['optimizer']} {r['harmful_or_tempting_kept']}/"
                                   f"{r['harmful_or_tempting_pairs']}" for r in present))


def _generic_target(cd_rows: list[dict]) -> dict[str, Any]:
    present = [r for r in cd_rows if r.get("generic_per_run") is not None]
    if not cd_rows:
        return {"status": "n/a", "detail": "no CD run"}
    if not present:
        return {"status": "n/a", "detail": "no generic rule in the pool"}
    over = [f"{r['optimizer']} {r['generic_per_run']:.2f}/run > {GENERIC_MAX} "
            f"(+{r['generic_per_run'] - GENERIC_MAX:.2f})" for r in present if r["generic_per_run"] > GENERIC_MAX + EPS]
    return _status(over, ", ".join(f"{r['optimizer']} {r['generic_per_run']:.2f}/run" for r in present))


def _versus(cd: dict | None, other: dict | None, ratio: float, name: str) -> dict[str, Any]:
    """``cd``'s mean oracle accuracy at least ``other``'s, at no more than ``ratio`` x its mean student calls."""
    if cd is None or cd["oracle_accuracy"] is None or other is None or other["oracle_accuracy"] is None:
        return {"status": "n/a", "detail": f"needs the CD preset and {name} (run them or --reference)"}
    budget = ratio * other["student_calls"]
    short = []
    if cd["oracle_accuracy"] < other["oracle_accuracy"] - EPS:
        short.append(f"oracle {cd['oracle_accuracy']:.3f} < {other['oracle_accuracy']:.3f} of {name} "
                     f"(-{other['oracle_accuracy'] - cd['oracle_accuracy']:.3f})")
    if cd["student_calls"] > budget + EPS:
        short.append(f"{cd['student_calls']:.0f} student calls > {budget:.0f} ({ratio:g} x {name}'s "
                     f"{other['student_calls']:.0f}; +{cd['student_calls'] - budget:.0f})")
    passes = (f"oracle {cd['oracle_accuracy']:.3f} >= {other['oracle_accuracy']:.3f}, {cd['student_calls']:.0f} <= "
              f"{budget:.0f} calls")
    return {**_status(short, passes), "other_oracle": other["oracle_accuracy"], "call_budget": budget}


# -- output ---------------------------------------------------------------------------------------------------------
KIND_ORDER = ("helpful", "harmful", "tempting", "generic", "neutral")


def _f(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _seeds(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for seed in sorted(set(seeds)):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def task_shape(t: dict[str, Any]) -> str:
    """The program, metric and placement of a described task, in words."""
    program = t.get("program") or ("cot" if t["predictors"] == 1 else "plan-answer")
    parts = [f"{program} ({t['predictors']} pred.)"]
    if t.get("metric", "exact") != "exact":
        parts.append(f"{t['metric']} metric")
    if t.get("placement", "own") != "own":
        parts.append(f"{t['placement']} placement")
    if t.get("subgroup"):
        parts.append(f"subgroup {t['subgroup']}")
    return ", ".join(parts)


def task_table(tasks: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| task | mode | program | proposer (CD) | train/val/test | flip | redraw | pool (helpful / harmful / "
             "tempting / generic / neutral effects) | baseline | oracle |",
             "|---|---|---|---|---|---:|---:|---|---:|---:|"]
    for t in tasks.values():
        kinds = {k: ", ".join(f"{r['effect']:+.3g}" + ("p" if r["field"] == "plan" else "")
                              for r in t["pool"] if r["kind"] == k) or "—" for k in KIND_ORDER}
        lines.append(f"| {t['name']} | {t['mode']} | {task_shape(t)} | {t['proposer']} | {t['n_train']}/{t['n_val']}/"
                     f"{t['n_test']} | {t['flip_rate']:g} | {_f(t['redraw'], 'g')} | "
                     + " / ".join(kinds[k] for k in KIND_ORDER) + f" | {t['baseline_accuracy']:.3f} | "
                     f"{t['oracle_accuracy']:.3f} |")
    return lines


def _count(k: int | None, n: int) -> str:
    return "—" if k is None else f"{k}/{n}"


def results_table(rows: Sequence[dict[str, Any]], task: str, block: str | None = None) -> list[str]:
    lines = ["| optimizer | oracle acc. | test acc. (95% CI) | below baseline: oracle (test) | helpful recall | "
             "harmful or tempting kept (run, rule) | generic kept/run | valset gain: reported / true | valset "
             "optimism (95% CI) | student calls (min-max) | proposer calls | wall s/run | runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in (r for r in rows if r["task"] == task and (block is None or r.get("block") == block)):
        ci = f" ± {r['test_ci95']:.3f}" if r["test_ci95"] is not None else ""
        runs = f"{r['runs_ok']}/{r['runs']}" + ("" if r["source"] == "this run" else f" ({r['source']})")
        if r["errors"]:
            runs += f"; errors: {'; '.join(e[:80] for e in r['errors'])}"
        below = (f"{_count(r.get('below_baseline_runs'), r['runs_ok'])} (test "
                 f"{_count(r.get('below_baseline_test_runs'), r.get('below_baseline_test_of', 0))})")
        gains = "—" if r.get("valset_reported_gain") is None else \
            f"{r['valset_reported_gain']:+.3f} / {r['true_gain']:+.3f}"
        optimism = "—" if r.get("valset_optimism") is None else f"{r['valset_optimism']:+.3f}" + (
            f" ± {r['valset_optimism_ci95']:.3f}" if r.get("valset_optimism_ci95") is not None else "")
        lines.append(f"| {r['optimizer']} | {_f(r['oracle_accuracy'])} | {_f(r['test_accuracy'])}{ci} | {below} | "
                     f"{_f(r['helpful_recall'], '.2f')} | "
                     f"{_count(r.get('harmful_or_tempting_kept'), r.get('harmful_or_tempting_pairs', 0))} | "
                     f"{_f(r.get('generic_per_run'), '.2f')} | {gains} | {optimism} | "
                     f"{_f(r['student_calls'], '.0f')} ({r['student_calls_min']}-{r['student_calls_max']}) | "
                     f"{_f(r['helper_calls'], '.1f')} | {_f(r['wall_seconds'], '.2f')} | {runs} |")
    return lines


TARGET_COLUMNS = (
    ("below_baseline", f"below-baseline runs (oracle) <= {BELOW_MAX:.0%} (each CD preset)"),
    ("harmful_or_tempting", f"harmful or tempting kept <= {BAD_MAX:.0%} of (run, rule) pairs (each CD preset)"),
    ("medium_vs_gepa", f"medium >= GEPA light, <= {MEDIUM_CALL_RATIO:g}x its calls"),
    ("light_vs_copro", f"light >= COPRO (4, 2), <= {LIGHT_CALL_RATIO:g}x its calls"),
    ("generic", f"generic kept <= {GENERIC_MAX:g}/run (each CD preset)"),
)


def targets_table(checks: dict[str, dict[str, Any]]) -> list[str]:
    """The targets of one seed block, one row per task (``payload["targets"][block]``)."""
    mark = {"pass": "pass", "fail": "**FAIL**", "n/a": "n/a"}
    lines = ["| task | " + " | ".join(title for _, title in TARGET_COLUMNS) + " |",
             "|---|" + "---|" * len(TARGET_COLUMNS)]
    for task, c in checks.items():
        cells = [f"{mark[c[k]['status']]}: {c[k]['detail']}" for k, _ in TARGET_COLUMNS]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    passed = {k: sum(c[k]["status"] == "pass" for c in checks.values()) for k, _ in TARGET_COLUMNS}
    judged = {k: sum(c[k]["status"] != "n/a" for c in checks.values()) for k, _ in TARGET_COLUMNS}
    lines.append("| **passed** | " + " | ".join(f"{passed[k]} of {judged[k]}" for k, _ in TARGET_COLUMNS) + " |")
    return lines


def overview_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per CD preset and seed block, over every task: runs below the baseline (oracle, test), valset optimism,
    harmful or tempting kept, generic kept per run."""
    lines = ["| preset | seeds | tasks | runs | below baseline (oracle) | below baseline (test) | valset optimism, "
             "mean of task means | harmful or tempting kept | generic kept/run (tasks with generic rules) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in CD_KEYS:
        for block in dict.fromkeys(r.get("block") for r in rows):
            mine = [r for r in rows if r["optimizer"] == key and r.get("block") == block]
            if not mine:
                continue
            runs = sum(r["runs_ok"] for r in mine)
            below = sum(r["below_baseline_runs"] or 0 for r in mine)
            tested = sum(r.get("below_baseline_test_of", 0) for r in mine)
            below_test = sum(r.get("below_baseline_test_runs") or 0 for r in mine)
            optimism = [r["valset_optimism"] for r in mine if r.get("valset_optimism") is not None]
            bad = sum(r.get("harmful_or_tempting_kept") or 0 for r in mine)
            pairs = sum(r.get("harmful_or_tempting_pairs", 0) for r in mine)
            generic = [r["generic_per_run"] for r in mine if r.get("generic_per_run") is not None]
            lines.append(f"| {key} | {block} | {len(mine)} | {runs} | {below}/{runs} ({_share(below, runs)}) | "
                         f"{below_test}/{tested} ({_share(below_test, tested)}) | "
                         f"{_f(_mean(optimism), '+.3f')} | {bad}/{pairs} ({_share(bad, pairs)}) | "
                         f"{_f(_mean(generic), '.2f')} |")
    return lines


def _share(k: int, n: int) -> str:
    return f"{k / n:.0%}" if n else "—"


def markdown(payload: dict[str, Any]) -> str:
    meta, tasks, rows, checks = payload["meta"], payload["tasks"], payload["summary"], payload["targets"]
    blocks = list(dict.fromkeys(r.get("block", "0-9") for r in rows))
    partial = [t["name"] for t in tasks.values() if t.get("metric", "exact") != "exact"]
    out = ["# Task family: rule selection across simulated tasks", "",
           f"Command: `{meta['command']}`", "",
           f"dspy {meta['versions'].get('dspy')}, gepa {meta['versions'].get('gepa')}, optuna "
           f"{meta['versions'].get('optuna')}; dspy_concept_distill at {meta['library_revision']}; seeds "
           f"{meta['seeds_label']}; " + (f"{meta['jobs']} process(es) x {meta['threads']} threads; total wall "
                                           f"{meta['wall_seconds']:.0f} s" if not meta.get("parts") else
                                           "merged from the parts below") +
           ". Scripted LMs (not real models), caches off; calls counted at the engines "
           "during compile. *Oracle acc.*: the analytic expected accuracy of the returned program from the rules in "
           "its instructions (on a partial-credit task, its expected metric value: the expected score"
           + (f"; here {', '.join(partial)}" if partial else "") + "); *test acc.*: the mean metric on the task's "
           "separate test split with a fresh student. *Below baseline*: runs whose returned program's oracle "
           "(test) accuracy is below the unchanged program's. *Valset optimism*: ConceptDistillation's reported "
           "valset gain (`final_score - baseline_score`) minus the true gain (oracle of the returned program minus "
           "the baseline oracle), mean over runs with a 95% t interval. *Harmful or tempting kept*: such pool rules "
           "in force in the returned program over (run, rule) pairs; *generic kept/run*: cheap generic rules in "
           "force per run. Seeds 0-9 are the tuning block, 10-29 the held-out block, reported separately."
           + (f" ({meta['rendered']}.)" if meta.get("rendered") else ""), ""]
    for part in meta.get("parts", []):
        versions = ", ".join(f"{k} {v}" for k, v in (part.get("versions") or {}).items())
        out.append(f"- part `{part['command']}` ({part['file']}): {part.get('runs_kept', '?')} runs kept, of "
                   f"{', '.join(part.get('tasks', []))}; their source: {', '.join(part.get('sources', []))}; the "
                   f"part's library {part['library_revision']}, harness "
                   f"{part.get('harness_revision') or 'not recorded'}, {versions}; seeds {part['seeds_label']}, "
                   f"{part['jobs']} process(es), wall "
                   f"{part['wall_seconds'] or 0:.0f} s")
    if meta.get("parts"):
        out.append("")
    out += ["## Tasks", "", *task_table(tasks), "",
            "Effects are expected-accuracy (expected-score) changes of each pool rule added alone (`p`: acts in the "
            "plan predictor). Descriptions:", "", *[f"- **{t['name']}**: {t['summary']}" for t in tasks.values()]]
    if any(r["optimizer"] in CD_KEYS for r in rows):
        for block in blocks:
            out += ["", f"## Targets (issue 14 Must 5), {block_title(block)}; means over seeds", "",
                    *targets_table(checks.get(block, {}))]
        out += ["", "## Below the baseline, valset optimism, rules kept (every task)", "", *overview_table(rows)]
    else:
        out += ["", "No ConceptDistillation run here, so no targets are checked: this file holds reference rows "
                "(`--reference`) for runs of the CD presets."]
    out += ["", "## Results per task"]
    for task in tasks:
        base_test = _mean([r.get("baseline_test_accuracy") for r in rows if r["task"] == task])
        out += ["", f"### {task} (baseline {tasks[task]['baseline_accuracy']:.3f}"
                + (f", test {base_test:.3f}" if base_test is not None else "")
                + f"; oracle {tasks[task]['oracle_accuracy']:.3f})"]
        for block in blocks:
            here = [r for r in rows if r["task"] == task and r.get("block", "0-9") == block]
            if not here:
                continue
            seeds = sorted({s for r in here for s in r["seeds"]})
            out += ["", f"{block_title(block).capitalize()}: run on seeds {_seeds(seeds)}.", "",
                    *results_table(rows, task, block)]
            missed = [(r["optimizer"], r["missed_helpful"]) for r in here if r["missed_helpful"]]
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


CSV_FIELDS = ["task", "optimizer", "block", "runs", "runs_ok", "task_baseline", "task_oracle", "oracle_accuracy",
              "test_accuracy", "test_ci95", "baseline_test_accuracy", "below_baseline_runs", "below_baseline_share",
              "below_baseline_test_runs", "below_baseline_test_of", "below_baseline_test_share",
              "valset_reported_gain", "true_gain", "valset_optimism", "valset_optimism_ci95", "valset_optimism_runs",
              "helpful_recall", "harmful_acceptance", "harmful_or_tempting_kept", "harmful_or_tempting_pairs",
              "harmful_or_tempting_share", "generic_per_run", "student_calls", "student_calls_min",
              "student_calls_max", "helper_calls", "wall_seconds", "source"]


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
