"""Summary, claim verdict and Markdown report of the optimizer comparison (``compare.py``,
``python -m benchmarks compare``)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

OURS = "ours"


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(specs: Sequence[Any], records: Sequence[Any], seeds: Sequence[int]) -> dict[str, Any]:
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


def per_seed_table(summary: dict[str, Any], records: Sequence[Any]) -> list[str]:
    """The "Per seed" section: one row per optimizer run."""
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
    return detail


def markdown(summary: dict[str, Any], records: Sequence[Any], meta: dict[str, Any]) -> tuple[str, str]:
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

    detail = per_seed_table(summary, records)
    settings = ["", "## Settings", ""] + [f"- **{row['label']}**: {row['settings']}" for row in summary["rows"]]
    head = [
        "# Student-LM calls per compile: DSPy 3.4 optimizers vs ConceptDistillation (simulated world)", "",
        f"Task: `SimulatedTask.create({meta['n_train']}, {meta['n_val']}, seed=s, flip_rate={meta['flip_rate']})`, "
        f"seeds {seeds}; "
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
    "Each proposal is drawn from the seed, the request's text and how often that request was seen, so runs are "
    "repeatable whatever order parallel calls arrive in.",
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
