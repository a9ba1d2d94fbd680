"""Phase 2, second half: the teacher's proposals become candidate rules. Unknown predictors are resolved or
rejected, rules that are too long, too short or leak training data are rejected, near-duplicates are merged, and a
near miss of an earlier round may be measured once more."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..records import BatchReply, Mistake, Proposal
from ..rules import (
    MAX_RULE_CHARS,
    MAX_RULES_CHARS_PER_PREDICTOR,
    Rule,
    RuleStatus,
    RuleVerdict,
    fits_predictor_budget,
    normalize_rule_text,
)
from ..text import clip_text
from .dedupe import similar
from .rule_checks import LeakChecker, length_problem

MAX_ATTEMPTS = 2


def resolve_predictor(name: str, names: Sequence[str]) -> str | None:
    """The program's predictor a teacher-given name refers to: exact, or unambiguous by prefix/suffix."""
    name = (name or "").strip().strip("`'\"")
    if name in names:
        return name
    if len(names) == 1 and not name:
        return names[0]
    matches = [n for n in names if n.startswith(name + ".") or n.endswith("." + name) or n.split(".")[0] == name]
    if len(matches) == 1:
        return matches[0]
    if len(names) == 1:
        return names[0]
    return None


def rules_from_replies(
    replies: Sequence[BatchReply],
    batches: Sequence[Sequence[Mistake]],
    *,
    predictor_names: Sequence[str],
    leak_checker: LeakChecker,
    known_rules: Sequence[Rule],
    round_index: int,
    fresh: Callable[[Rule], bool] = lambda rule: True,
) -> tuple[list[Rule], list[RuleVerdict]]:
    """Turn teacher replies into candidate rules, in the teacher's order of preference (the mean position of a
    rule in the replies that proposed it, best first; then support), and a verdict rejecting each invalid, leaking
    or duplicate one.

    ``known_rules`` are rules from earlier rounds (in force or rejected): a near-duplicate of one of them is
    rejected without spending calls on it again, unless it was rejected as a near miss and a new measurement would
    be fresh evidence (``fresh``: the rules in force changed since it was raced; see ``_worth_retrying``).
    """
    out: list[Rule] = []
    rejected: list[RuleVerdict] = []
    kept: list[Rule] = []
    merged_into: dict[str, Rule] = {}  # rule id -> the kept rule that carries it
    ranks: dict[str, list[float]] = {}  # carrier id -> where each of its proposals stood in its reply (0 = first)
    in_force = [r for r in known_rules if r.status == RuleStatus.ACCEPTED]
    for reply, batch in zip(replies, batches, strict=True):
        for position, proposal in enumerate(reply.rules):
            proposed = _proposed_rule(proposal, batch, predictor_names, round_index, reply.batch)
            if proposed is None:
                continue
            rule, reason = proposed
            rank = position / max(1, len(reply.rules) - 1)
            same = merged_into.get(rule.id) or next((r for r in out if r.id == rule.id), None)
            if same is not None:
                # the same text again: more support for the rule that carries it, not another row
                same.source_mistakes = list(dict.fromkeys([*same.source_mistakes, *rule.source_mistakes]))
                ranks.setdefault(same.id, []).append(rank)
                continue
            ranks.setdefault(rule.id, []).append(rank)
            out.append(rule)
            reason = reason or leak_checker.check(rule.text, [m.gold for m in batch])
            if reason:
                rejected.append(RuleVerdict.reject(rule, reason))
                continue
            original = _find_duplicate(rule, kept)
            if original is not None:
                ranks.setdefault(original.id, []).append(rank)
                original.duplicates.append(rule.text)
                original.source_mistakes = list(dict.fromkeys([*original.source_mistakes, *rule.source_mistakes]))
                merged_into[rule.id] = original
                rejected.append(RuleVerdict.reject(rule, f"near-duplicate of candidate {original.id}, merged into it"))
                continue
            earlier = _find_duplicate(rule, known_rules)
            if earlier is not None and _worth_retrying(earlier, fresh):
                rule.attempts = earlier.attempts + 1  # proposed again after a near miss: one more, fresh measurement
            elif earlier is not None:
                what = "in force" if earlier.status != RuleStatus.REJECTED else f"rejected in round {earlier.round + 1}"
                rejected.append(RuleVerdict.reject(rule, f"near-duplicate of rule {earlier.id} ({what})"))
                continue
            if not fits_predictor_budget(in_force, rule):
                rejected.append(RuleVerdict.reject(rule, _over_budget_reason(in_force, rule)))
                continue
            kept.append(rule)
            merged_into[rule.id] = rule
    # The teacher's order of preference: where it put the rule in its replies ("best first"), then support.
    out.sort(key=lambda r: (sum(ranks[r.id]) / len(ranks[r.id]), -len(r.source_mistakes)))
    return out, rejected


def _proposed_rule(proposal: Proposal, batch: Sequence[Mistake], names: Sequence[str], round_index: int,
                   batch_index: int) -> tuple[Rule, str | None] | None:
    """The Rule a teacher's proposal describes (None if it has no text) and why it is malformed, if it is: an
    unknown predictor, too long or too short. Teacher text that fails a cap is stored clipped (an unknown
    predictor's name to ``CLIP_CHARS``, an over-long rule to ``MAX_RULE_CHARS``) so it cannot flood a report."""
    text = normalize_rule_text(proposal.text)
    if not text:
        return None
    numbers = [n for n in proposal.mistakes if 1 <= n <= len(batch)]
    sources = [batch[n - 1] for n in numbers] or list(batch)
    name = proposal.predictor
    target = resolve_predictor(name, names)
    problem = length_problem(text)
    rule = Rule(
        text=clip_text(text, MAX_RULE_CHARS),
        predictor=target or clip_text(name) or "?",
        source_mistakes=list(dict.fromkeys(m.id for m in sources)),
        round=round_index,
        batch=batch_index,
    )
    if target is None:
        return rule, f"targets unknown predictor {rule.predictor!r}; the program has {list(names)}"
    return rule, problem


def _over_budget_reason(in_force: Sequence[Rule], rule: Rule) -> str:
    used = sum(len(r.text) for r in in_force if r.predictor == rule.predictor)
    return (f"too much rule text for predictor {rule.predictor!r}: the {used:,} characters of its rules in force "
            f"plus this rule's {len(rule.text):,} exceed MAX_RULES_CHARS_PER_PREDICTOR="
            f"{MAX_RULES_CHARS_PER_PREDICTOR}")


def _worth_retrying(earlier: Rule, fresh: Callable[[Rule], bool]) -> bool:
    """A rejected rule is measured once more in a later round if it was a near miss (a positive gain on the
    examples it was scored on that was not shown to be real) and a new measurement is fresh evidence: the rules in
    force changed since it was raced, so its prompts (and a real LM's answers) are new. Against the same rules the
    evaluation cache would answer the same pairs again, which is no evidence at all. A rule that lost, or was
    already measured twice, stays rejected."""
    return (earlier.status == RuleStatus.REJECTED and earlier.gain is not None and earlier.gain > 0
            and earlier.evaluated_on > 0 and earlier.attempts < MAX_ATTEMPTS and fresh(earlier))


def near_misses_to_retry(known_rules: Sequence[Rule], proposed: Sequence[Rule], round_index: int,
                         fresh: Callable[[Rule], bool] = lambda rule: True) -> list[Rule]:
    """Near misses of earlier rounds (see ``_worth_retrying``) that the teacher did not propose again: each gets one
    more, fresh measurement on top of the rules now in force, as a new candidate of this round."""
    this_round = {r.id for r in proposed}
    latest: dict[str, Rule] = {}
    for rule in known_rules:
        if rule.round < round_index:
            latest[rule.id] = rule  # the last measurement of each rule
    return [Rule(text=r.text, predictor=r.predictor, source_mistakes=list(r.source_mistakes), round=round_index,
                 attempts=r.attempts + 1)
            for r in latest.values() if r.id not in this_round and _worth_retrying(r, fresh)]


def _find_duplicate(rule: Rule, pool: Sequence[Rule]) -> Rule | None:
    return next((r for r in pool if r.predictor == rule.predictor and similar(r.text, rule.text)), None)
