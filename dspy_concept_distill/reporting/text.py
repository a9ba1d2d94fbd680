"""The words of the report, shared by the plain-text summary and the HTML page: scores, gains with their confidence
intervals, adherence and ablation flags, spend against budget, and why nothing was learned when nothing was.

Everything a person reads numbers rounds from 1 (``Rule.round`` and ``Mistake.round`` are stored from 0), and text
a teacher wrote (rule texts, predictor names, reasons, diagnoses) is clipped, so one garbage reply cannot flood
the output.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..rules import Rule, RuleStatus
from ..runtime.metering import Role
from ..text import clip_text, fmt_score
from .view import ResultView

PREDICTOR_CHARS = 40  # a predictor name as shown (a teacher may invent a 500-character one)
MODEL_CHARS = 48
RULE_CHARS = 160  # a rule text in the plain-text summary
REASON_CHARS = 200
MAX_LISTED_REJECTED = 20  # rejected rules listed one per line in the summary; the rest are counted
STATUS_WORDS = {RuleStatus.ACCEPTED: "kept", RuleStatus.REJECTED: "dropped", RuleStatus.CANDIDATE: "not verified"}


def tidy(text: Any, limit: int) -> str:
    """Teacher text as shown: one line of at most ``limit`` characters, and no run of more than ``PREDICTOR_CHARS``
    characters without a space (a reason may quote a garbage predictor name whole)."""
    line = re.sub(rf"\S{{{PREDICTOR_CHARS + 1},}}", lambda m: m.group(0)[:PREDICTOR_CHARS] + "…", str(text))
    return clip_text(line, limit)


def fmt_gain(gain: float | None) -> str:
    return "n/a" if gain is None else f"{gain:+.3f}"


def fmt_ci(ci: Any) -> str:
    """``95% CI +0.020 to +0.380``, or "" when there is no interval."""
    if not ci or len(ci) != 2 or any(v is None for v in ci):
        return ""
    return f"95% CI {ci[0]:+.3f} to {ci[1]:+.3f}"


def rule_gain(rule: Rule) -> str:
    """The measured gain; "not measured" for a rule dropped before it ran on the valset."""
    if rule.status != RuleStatus.ACCEPTED and not rule.evaluated_on:
        return "not measured"
    return fmt_gain(rule.gain)


def gain_with_ci(rule: Rule) -> str:
    ci = fmt_ci(rule.gain_ci)
    return rule_gain(rule) + (f", {ci}" if ci else "")


def display_round(stored: int | None) -> int | None:
    """The round number a person reads (from 1) for a round stored from 0."""
    return None if stored is None else stored + 1


def round_label(rule: Rule) -> str:
    """Where a rule came from, in a few words: ``round 2``, or ``inherited`` for one the program already carried."""
    return "inherited" if rule.inherited is not None else f"round {display_round(rule.round)}"


def inherited_note(rule: Rule) -> str:
    """Where an inherited rule came from and what was measured for it before; "" for a rule written in this run."""
    if rule.inherited is None:
        return ""
    note = f"Inherited from {rule.inherited.get('source', 'the program')}"
    earlier = rule.inherited.get("earlier") or {}
    if earlier.get("gain") is not None:
        note += f"; gain {fmt_gain(earlier['gain'])} when it was kept there"
    return note + "; re-checked on this valset"


def predictor_label(name: str) -> str:
    return clip_text(name, PREDICTOR_CHARS)


def status_word(rule: Rule, kept_ids: set[str]) -> str:
    """kept, dropped, not verified; an accepted rule left out of the returned program is "accepted, not returned"."""
    if rule.status == RuleStatus.ACCEPTED and rule.id not in kept_ids:
        return "accepted, not returned"
    return STATUS_WORDS.get(rule.status, str(rule.status))


def adherence_note(rule: Rule) -> str:
    """Does the student act on the rule? "" when it was not measured."""
    adherence = rule.adherence
    if adherence is None:
        return ""
    where, n = adherence.where, adherence.examples
    if not n:
        return f"adherence not measured (no {where})"
    counts = f"output changed on {adherence.changed} of {n} {where}, fixed {adherence.fixed}"
    return f"student ignores it: {counts}" if adherence.ignored else f"followed: {counts}"


def ablation_note(rule: Rule, min_gain: float) -> str:
    """What leaving the rule out of the final set costs; "" when no ablation ran."""
    loss = rule.ablation_gain
    if loss is None:
        return ""
    if loss <= 0:
        return f"adds nothing once the others are in ({loss:+.3f} without it)"
    if loss < min_gain:
        return f"adds less than min_gain once the others are in ({loss:+.3f})"
    return f"still needed: worth {loss:+.3f} in the final set"


def flags(rule: Rule, min_gain: float) -> list[str]:
    """Short warnings for a kept rule: the student ignores it, or it no longer adds anything."""
    out = []
    if rule.adherence is not None and rule.adherence.ignored:
        out.append("student ignores it")
    if rule.ablation_gain is not None and rule.ablation_gain < min_gain:
        out.append("adds nothing once the others are in" if rule.ablation_gain <= 0 else "adds less than min_gain")
    return out


def reason_kind(reason: str) -> str:
    """A reason with its particulars (numbers, quoted text, rule ids) blanked, so reasons can be counted by kind."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    text = re.sub(r"\br[0-9a-f]{10}\b", "…", text)
    return re.sub(r"[-+]?\d[\d.,]*", "#", text)


def most_common_reason(rules: Sequence[Rule]) -> tuple[str, int] | None:
    """(an example of the most common kind of reason, how many rules share that kind)."""
    reasons = [r.reason for r in rules if r.reason]
    if not reasons:
        return None
    kind, count = Counter(reason_kind(r) for r in reasons).most_common(1)[0]
    example = next(r for r in reasons if reason_kind(r) == kind)
    return example, count


def why_nothing_learned(result: ResultView) -> str | None:
    """Why the returned program carries no rule, or None when it carries some."""
    if len(result.ruleset):
        return None
    if result.accepted_rules:
        return ("rules were accepted, but the final check could not show that they beat the original instructions "
                "(on the held-back valset examples, or strictly on the valset), so the original instructions are "
                "returned")
    if not result.mistakes and not result.rules:
        if result.stopped:
            return f"the run stopped before the student's mistakes were collected ({tidy(result.stopped, 160)})"
        return "the student made no mistakes on the trainset: there was nothing to learn from"
    if not result.rules:
        return _no_candidates(result)
    unverified = [r for r in result.rules if r.status == RuleStatus.CANDIDATE]
    if unverified and result.stopped:
        return (f"the run stopped before {len(unverified)} candidate rule(s) were verified "
                f"({tidy(result.stopped, 160)})")
    common = most_common_reason(result.rejected_rules)
    if common is None:
        return f"every one of the {len(result.rules)} candidate rules was rejected"
    example, count = common
    return (f"every one of the {len(result.rules)} candidate rules was rejected; most often ({count} of "
            f"{len(result.rejected_rules)}): {tidy(example, REASON_CHARS)}")


def _no_candidates(result: ResultView) -> str:
    failed = [r for r in result.replies if r.error]
    if result.replies and len(failed) == len(result.replies):
        first = tidy(failed[0].error, 160)
        why = f"the teacher gave no usable reply ({len(failed)} of {len(result.replies)} batches failed: {first})"
    elif result.replies:
        why = f"the teacher proposed no rules in {len(result.replies)} batch(es)"
    else:
        why = "the teacher was never asked for rules"
    return why + (f"; the run stopped: {tidy(result.stopped, 160)}" if result.stopped else "")


def budget_rows(result: ResultView) -> list[dict[str, Any]]:
    """Spend against each budget: what was used, the limit (None: unlimited) and cache hits (free) per role."""
    totals = result.usage.totals()
    budgets = result.budgets or {}
    rows: list[dict[str, Any]] = []
    for role, key in ((Role.STUDENT, "student_calls"), (Role.TEACHER, "teacher_calls")):
        total = totals.get(str(role), {})
        rows.append({"what": f"{role} calls", "used": total.get("calls", 0), "limit": budgets.get(key),
                     "cache_hits": total.get("cache_hits", 0),
                     "tokens": total.get("input_tokens", 0) + total.get("output_tokens", 0),
                     "cost": total.get("cost")})
    tokens = sum(t["input_tokens"] + t["output_tokens"] for t in totals.values())
    priced = [t["cost"] for t in totals.values() if t["cost"] is not None]
    rows.append({"what": "tokens (all LMs)", "used": tokens, "limit": budgets.get("tokens")})
    rows.append({"what": "USD (all LMs)", "used": sum(priced) if priced else None, "limit": budgets.get("cost_usd")})
    return rows


def fmt_amount(value: float | int | None, *, usd: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.4f}" if usd else f"{value:,}"


def fmt_share(used: float | int | None, limit: float | int | None) -> str:
    if limit is None:
        return "no limit"
    if not limit:
        return "none allowed"
    if used is None:
        return f"limit {limit:g}"
    return f"{100 * used / limit:.0f}%"


def estimate_line(estimate: dict[str, float | None]) -> str:
    low, high = (estimate or {}).get("low"), (estimate or {}).get("high")
    if high is None:
        return "projected before the run: no USD figure (no price known for these models)"
    return f"projected before the run: ${low or 0.0:,.4f} to ${high:,.4f}"


def spend_lines(result: ResultView) -> list[str]:
    """The plain-text spend block: one line per role, then tokens and USD across roles."""
    lines = ["spend against budget:"]
    for row in budget_rows(result):
        usd = row["what"].startswith("USD")
        used = fmt_amount(row["used"], usd=usd)
        if usd and row["used"] is None:
            used = "n/a (no price known)"
        if row["limit"] is None:
            line = f"  {row['what']}: {used} (no limit)"
        else:
            line = f"  {row['what']}: {used} of {fmt_amount(row['limit'], usd=usd)}"
            line += "" if row["used"] is None else f" ({fmt_share(row['used'], row['limit'])})"
        if "cache_hits" in row:
            cost = "" if row["cost"] is None else f", {fmt_amount(row['cost'], usd=True)}"
            line += f"; {row['cache_hits']:,} cache hits (free); {row['tokens']:,} tokens{cost}"
        lines.append(line)
    budgets = result.budgets or {}
    if budgets.get("program_runs") is not None:
        per_run = budgets.get("calls_per_run")
        lines.append(f"  (the student budget is {budgets['program_runs']:g} program runs"
                     + ("" if per_run is None else f", at {per_run:.1f} LM calls per run as measured") + ")")
    lines.append("  " + estimate_line(result.cost_estimate))
    return lines


def usage_lines(result: ResultView) -> list[str]:
    lines = ["usage per phase:"]
    for row in result.usage.rows():
        cost = "" if row.cost is None else f", ${row.cost:.4f}"
        hits = f", {row.cache_hits} cache hits" if row.cache_hits else ""
        lines.append(f"  {row.role:7s} {row.phase:12s} {tidy(row.model, MODEL_CHARS)}: {row.calls} calls{hits}, "
                     f"{row.input_tokens:,} in / {row.output_tokens:,} out tokens{cost}")
    return lines


def headline(result: ResultView) -> str:
    change = ""
    if result.baseline_score is not None and result.final_score is not None:
        change = f" ({result.final_score - result.baseline_score:+.3f})"
    kept = len(result.ruleset)
    return (f"valset score: {fmt_score(result.baseline_score)} -> {fmt_score(result.final_score)}{change} with "
            f"{kept} rule{'s' if kept != 1 else ''} kept of {len(result.rules)} candidate(s)")


def _kept_line(number: int, rule: Rule, min_gain: float, again: list[int]) -> str:
    notes = [round_label(rule), f"gain {gain_with_ci(rule)}", *flags(rule, min_gain)]
    if again:
        notes.append("proposed again in round " + ", ".join(map(str, again)))
    text = tidy(rule.text, RULE_CHARS)
    return f"  + R{number} [{predictor_label(rule.predictor)}] {text}  ({' | '.join(notes)})"


def _rejected_line(rule: Rule) -> str:
    return (f"  - [{predictor_label(rule.predictor)}] {tidy(rule.text, RULE_CHARS)}  "
            f"({round_label(rule)}: {tidy(rule.reason or 'no reason recorded', REASON_CHARS)})")


def summary_lines(result: ResultView) -> list[str]:
    rounds = len(result.rounds)
    lines = [headline(result),
             f"  {result.valset_size} validation / {result.trainset_size} training examples, min_gain "
             f"{result.min_gain:g}, {rounds} round{'s' if rounds != 1 else ''}"]
    if result.stopped:
        lines.append(f"stopped early: {tidy(result.stopped, REASON_CHARS)}")
    if (why := why_nothing_learned(result)) is not None:
        lines.append(f"nothing learned: {why}")
    kept = kept_rules(result)
    lines.append(f"accepted rules ({len(result.accepted_rules)}):")
    lines += [_kept_line(i, r, result.min_gain, proposed_again(result, r)) for i, r in enumerate(kept, 1)] or [
        "  (none)"]
    lines += [f"  + (not returned) [{predictor_label(r.predictor)}] {tidy(r.text, RULE_CHARS)}"
              for r in result.accepted_rules if r.id not in {k.id for k in kept}]
    rejected = result.rejected_rules
    lines.append(f"rejected rules ({len(rejected)}):")
    lines += [_rejected_line(r) for r in rejected[:MAX_LISTED_REJECTED]] or ["  (none)"]
    if len(rejected) > MAX_LISTED_REJECTED:
        lines.append(f"  ... and {len(rejected) - MAX_LISTED_REJECTED} more (see report())")
    unverified = [r for r in result.rules if r.status == RuleStatus.CANDIDATE]
    if unverified:
        lines.append(f"not verified ({len(unverified)}): the run stopped before they were measured")
    return lines + spend_lines(result) + usage_lines(result)


def ordered_rules(result: ResultView) -> list[Rule]:
    """Every rule record, kept ones first (in the order they were added), then other accepted, rejected and
    unverified rules, each group by round. A later proposal of a kept rule (same id) is not listed: it never takes
    the kept record's place (see ``proposed_again``)."""
    kept = kept_rules(result)
    kept_ids = {r.id for r in kept}
    rank = {RuleStatus.ACCEPTED: 0, RuleStatus.REJECTED: 1, RuleStatus.CANDIDATE: 2}
    rest = sorted((r for r in result.rules if r.id not in kept_ids), key=lambda r: (rank.get(r.status, 3), r.round))
    return kept + rest


def kept_rules(result: ResultView) -> list[Rule]:
    """The returned rule set, in order, as the accepted records of ``result.rules`` (they carry the evidence);
    a later record of the same rule (proposed again, rejected as already in force) never stands in for one."""
    accepted: dict[str, Rule] = {}
    for rule in result.rules:
        if rule.status == RuleStatus.ACCEPTED:
            accepted.setdefault(rule.id, rule)
    return [accepted.get(r.id, r) for r in result.ruleset]


def proposed_again(result: ResultView, rule: Rule) -> list[int]:
    """Rounds (from 1) in which a kept rule was proposed again after it was kept."""
    return sorted({display_round(r.round) or 0 for r in result.rules
                   if r.id == rule.id and r is not rule and r.round > rule.round})
