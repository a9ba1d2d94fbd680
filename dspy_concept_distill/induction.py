"""Phase 2: the teacher explains batches of mistakes and writes candidate rules.

Teacher calls are DSPy Signatures with typed outputs, run under ``dspy.context(lm=teacher_lm)``. Replies that
do not parse are retried with a fresh rollout, then skipped with a warning. Proposed rules are cleaned up here:
unknown predictors are resolved or rejected, rules that leak training data are rejected, near-duplicates merged.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
import pydantic
from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedFeatureError

from .budget import BudgetExhaustedError, phase
from .dedupe import similar
from .evaluation import is_lm_infrastructure_error
from .execution import Executor, StopRequestedError
from .guards import LeakChecker, clip_text, length_problem
from .mistakes import Mistake
from .rules import (
    ACCEPTED,
    MAX_RULE_CHARS,
    MAX_RULES_CHARS_PER_PREDICTOR,
    REJECTED,
    Rule,
    fits_predictor_budget,
    normalize_rule_text,
)

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
MAX_DIAGNOSIS_CHARS = 600


class ProposedRule(pydantic.BaseModel):
    predictor: str = pydantic.Field(description="exact name of the predictor whose instructions get this rule")
    rule: str = pydantic.Field(description="one short, general, actionable instruction")
    mistakes: list[int] = pydantic.Field(default_factory=list, description="numbers of the mistakes it prevents")


class TeacherAnalysis(pydantic.BaseModel):
    diagnoses: list[str] = pydantic.Field(description="for each mistake in order, one or two sentences on its cause")
    rules: list[ProposedRule] = pydantic.Field(description="candidate rules, best first")


class InduceConcepts(dspy.Signature):
    """You improve the instructions of a weaker "student" language model that runs the program described in `task`.

    You see the program's predictors (their fields and current instructions), the rules already added to their
    instructions, and a numbered batch of mistakes the student made on training examples: the inputs, the gold
    labels, what each predictor produced, the score, and the metric's feedback when there is any.

    First diagnose each mistake: the misunderstanding, missing knowledge or format error behind it.
    Then write rules that would prevent such mistakes on new, unseen examples. Every rule must be:
    - one sentence of at most 40 words, an instruction the student can act on;
    - general: about a kind of problem, never about one example; never state the expected answer of an example
      (naming the labels a field can take is fine) and never quote an example's input;
    - new: not a restatement of a rule already in force;
    - aimed at exactly one predictor, named exactly as in `task`.
    Prefer a few strong rules over many weak ones, and say which mistakes each rule would prevent."""

    task: str = dspy.InputField(desc="the program's predictors with their input/output fields and instructions")
    rules_in_force: str = dspy.InputField(desc="rules already in the student's instructions, per predictor")
    mistakes: str = dspy.InputField(desc="numbered mistakes of the student")
    max_rules: int = dspy.InputField(desc="write at most this many rules")
    analysis: TeacherAnalysis = dspy.OutputField(desc="a diagnosis of each mistake, then candidate rules")


@functools.cache
def induction_signature(max_rules: int, batch_size: int, *, schema_caps: bool = True) -> type[dspy.Signature]:
    """``InduceConcepts`` whose reply type caps its lists: at most ``batch_size`` diagnoses and mistake numbers
    per rule, at most ``max_rules`` rules.

    The caps reach the LM as ``maxItems`` in the reply schema (unless ``schema_caps`` is off, for providers that
    refuse the keyword): with grammar-constrained decoding they keep a weak teacher from looping until it runs
    out of tokens. Parsing is lenient: a reply over a cap keeps its first items and logs what was dropped, rather
    than failing whole. (The caps sit on nested models: DSPy drops constraints of top-level output fields when
    it builds the schema.)"""
    def capped(cap: int, description: str, **kwargs: Any) -> Any:
        return pydantic.Field(max_length=cap if schema_caps else None, description=description, **kwargs)

    rule_model = pydantic.create_model(
        "ProposedRule",
        __base__=ProposedRule,
        __validators__={"keep_first_mistakes": _keep_first("mistakes", batch_size, "mistake numbers in one rule")},
        mistakes=(list[int], capped(batch_size, "numbers of the mistakes it prevents", default_factory=list)),
    )
    analysis_model = pydantic.create_model(
        "TeacherAnalysis",
        __validators__={"keep_first_diagnoses": _keep_first("diagnoses", batch_size, "diagnoses"),
                        "keep_first_rules": _keep_first("rules", max_rules, "rules")},
        diagnoses=(list[str], capped(batch_size, "for each mistake in order, one or two sentences on its cause")),
        rules=(list[rule_model], capped(max_rules, "candidate rules, best first")),
    )
    return InduceConcepts.with_updated_fields("analysis", type_=analysis_model)


def _keep_first(field_name: str, cap: int, what: str) -> Any:
    """A pydantic before-validator that keeps the first ``cap`` items of a list field and logs what it drops, so
    a reply over a schema cap still parses."""
    def keep_first(cls: type, items: Any) -> Any:
        if isinstance(items, list) and len(items) > cap:
            logger.warning("teacher wrote %d %s where at most %d were asked for; kept the first %d, dropped the "
                           "other %d", len(items), what, cap, cap, len(items) - cap)
            return items[:cap]
        return items

    return pydantic.field_validator(field_name, mode="before")(keep_first)


def describe_task(program: dspy.Module, base_instructions: dict[str, str]) -> str:
    """Each predictor's name, fields and base instructions, as the teacher reads them."""
    parts = []
    for name, predictor in program.named_predictors():
        sig = predictor.signature
        ins = ", ".join(f"`{k}`" + (f" ({_desc(v)})" if _desc(v) else "") for k, v in sig.input_fields.items())
        outs = ", ".join(f"`{k}`" + (f" ({_desc(v)})" if _desc(v) else "") for k, v in sig.output_fields.items())
        parts.append(
            f"Predictor `{name}`\n  inputs: {ins}\n  outputs: {outs}\n"
            f"  instructions: {base_instructions.get(name, sig.instructions).strip() or '(none)'}"
        )
    return "\n\n".join(parts)


def _desc(field_info: Any) -> str:
    extra = getattr(field_info, "json_schema_extra", None) or {}
    desc = str(extra.get("desc", "") or "")
    return "" if desc.startswith("${") else desc


def describe_rules(rules: Sequence[Rule]) -> str:
    if not rules:
        return "(none yet)"
    return "\n".join(f"- [{r.predictor}] {r.text}" for r in rules)


@dataclass
class BatchReply:
    """What one teacher call returned (kept for the report and checkpoints)."""

    round: int
    batch: int
    mistake_ids: list[str]
    diagnoses: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    transient: bool = False  # the teacher LM itself failed (network, quota): ask again on resume


def make_batches(
    mistakes: Sequence[Mistake], per_batch: int, num_batches: int, rng: random.Random
) -> list[list[Mistake]]:
    """Shuffled batches of mistakes; when there are fewer mistakes than slots, later batches resample them."""
    if not mistakes or num_batches <= 0:
        return []
    pool = list(mistakes)
    rng.shuffle(pool)
    batches = [pool[i : i + per_batch] for i in range(0, len(pool), per_batch)][:num_batches]
    while len(batches) < num_batches and len(pool) > 1:
        batches.append(rng.sample(pool, min(per_batch, len(pool))))
    return batches


@dataclass(frozen=True)
class TeacherBrief:
    """What every teacher call of a round shares."""

    task: str
    rules_in_force: str
    max_rules: int
    retries: int
    round_index: int


def ask_teacher(
    teacher_lm: dspy.LM,
    brief: TeacherBrief,
    batch: Sequence[Mistake],
    *,
    batch_index: int,
    rollout: int | None,
    rng: random.Random,
) -> BatchReply:
    """One teacher call on one batch, retried with a fresh rollout when the reply does not parse.

    If the provider refuses the request itself (some structured-output APIs reject schema keywords such as
    ``maxItems``), the retry sends the uncapped signature."""
    reply = BatchReply(round=brief.round_index, batch=batch_index, mistake_ids=[m.id for m in batch])
    mistakes_text = "\n\n".join(m.render(i) for i, m in enumerate(batch, 1))
    predict = dspy.Predict(induction_signature(brief.max_rules, max(1, len(batch))))
    for attempt in range(brief.retries + 1):
        lm = teacher_lm
        if rollout is not None or attempt > 0:
            lm = teacher_lm.copy(rollout_id=rollout if attempt == 0 else rng.randrange(1 << 30), temperature=1.0)
        reply.attempts = attempt + 1
        try:
            with phase("induction"), dspy.context(lm=lm):
                out = predict(task=brief.task, rules_in_force=brief.rules_in_force, mistakes=mistakes_text,
                              max_rules=brief.max_rules)
            analysis = out.analysis
            reply.diagnoses = [clip_text(d, MAX_DIAGNOSIS_CHARS) for d in (analysis.diagnoses or [])]
            reply.rules = [_as_dict(r) for r in (analysis.rules or [])]
            reply.error = None
            return reply
        except (BudgetExhaustedError, StopRequestedError):
            raise
        except Exception as exc:
            reply.error = f"{type(exc).__name__}: {exc}"[:500]
            if is_lm_infrastructure_error(exc):
                logger.warning("teacher LM failed on batch %d of round %d: %s", batch_index, brief.round_index, exc)
                reply.transient = True
                return reply
            if isinstance(exc, (LMInvalidRequestError, LMUnsupportedFeatureError)):
                predict = dspy.Predict(induction_signature(brief.max_rules, max(1, len(batch)), schema_caps=False))
            logger.warning(
                "teacher reply for batch %d of round %d did not parse (attempt %d of %d): %s",
                batch_index, brief.round_index, attempt + 1, brief.retries + 1, reply.error[:200],
            )
    logger.warning("skipping batch %d of round %d: no usable teacher reply", batch_index, brief.round_index)
    return reply


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, pydantic.BaseModel):
        return item.model_dump()
    if isinstance(item, dict):
        return dict(item)
    return {"rule": str(item)}


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
) -> list[Rule]:
    """Turn teacher replies into candidate rules, in the teacher's order of preference (the mean position of a
    rule in the replies that proposed it, best first; then support); invalid, leaking and duplicate ones come back
    rejected.

    ``known_rules`` are rules from earlier rounds (in force or rejected): a near-duplicate of one of them is
    rejected without spending calls on it again, unless it was rejected as a near miss (see ``_worth_retrying``).
    """
    out: list[Rule] = []
    kept: list[Rule] = []
    merged_into: dict[str, Rule] = {}  # rule id -> the kept rule that carries it
    ranks: dict[str, list[float]] = {}  # carrier id -> where each of its proposals stood in its reply (0 = first)
    in_force = [r for r in known_rules if r.status == ACCEPTED]
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
                rule.reject(reason)
                continue
            original = _find_duplicate(rule, kept)
            if original is not None:
                ranks.setdefault(original.id, []).append(rank)
                original.duplicates.append(rule.text)
                original.source_mistakes = list(dict.fromkeys([*original.source_mistakes, *rule.source_mistakes]))
                merged_into[rule.id] = original
                rule.reject(f"near-duplicate of candidate {original.id}, merged into it")
                continue
            earlier = _find_duplicate(rule, known_rules)
            if earlier is not None and _worth_retrying(earlier):
                rule.attempts = earlier.attempts + 1  # proposed again after a near miss: one more, fresh measurement
            elif earlier is not None:
                what = "in force" if earlier.status != REJECTED else f"rejected in round {earlier.round + 1}"
                rule.reject(f"near-duplicate of rule {earlier.id} ({what})")
                continue
            if not fits_predictor_budget(in_force, rule):
                rule.reject(_over_budget_reason(in_force, rule))
                continue
            kept.append(rule)
            merged_into[rule.id] = rule
    # The teacher's order of preference: where it put the rule in its replies ("best first"), then support.
    out.sort(key=lambda r: (sum(ranks[r.id]) / len(ranks[r.id]), -len(r.source_mistakes)))
    return out


def _proposed_rule(proposal: dict[str, Any], batch: Sequence[Mistake], names: Sequence[str], round_index: int,
                   batch_index: int) -> tuple[Rule, str | None] | None:
    """The Rule a teacher's proposal describes (None if it has no text) and why it is malformed, if it is: an
    unknown predictor, too long or too short. Teacher text that fails a cap is stored clipped (an unknown
    predictor's name to ``CLIP_CHARS``, an over-long rule to ``MAX_RULE_CHARS``) so it cannot flood a report."""
    text = normalize_rule_text(str(proposal.get("rule", "")))
    if not text:
        return None
    numbers = [n for n in proposal.get("mistakes", []) or [] if isinstance(n, int) and 1 <= n <= len(batch)]
    sources = [batch[n - 1] for n in numbers] or list(batch)
    name = str(proposal.get("predictor") or "")
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


def _worth_retrying(earlier: Rule) -> bool:
    """A rejected rule the teacher proposes again in a later round is measured once more if it was a near miss:
    it fixed its own source mistakes and did not lose on the valset examples it was scored on (gain >= 0), but
    did not reach ``min_gain``. With a noisy student, one unlucky measurement should not bury a helpful rule for
    good; a rule that lost, or was already measured twice, stays rejected."""
    return (earlier.status == REJECTED and earlier.gain is not None and earlier.gain >= 0
            and earlier.attempts < MAX_ATTEMPTS)


def near_misses_to_retry(known_rules: Sequence[Rule], proposed: Sequence[Rule], round_index: int) -> list[Rule]:
    """Near misses of earlier rounds (see ``_worth_retrying``) that the teacher did not propose again: each gets one
    more, fresh measurement on top of the rules now in force, as a new candidate of this round."""
    this_round = {r.id for r in proposed}
    latest: dict[str, Rule] = {}
    for rule in known_rules:
        if rule.round < round_index:
            latest[rule.id] = rule  # the last measurement of each rule
    return [Rule(text=r.text, predictor=r.predictor, source_mistakes=list(r.source_mistakes), round=round_index,
                 attempts=r.attempts + 1)
            for r in latest.values() if r.id not in this_round and _worth_retrying(r)]


def _find_duplicate(rule: Rule, pool: Sequence[Rule]) -> Rule | None:
    return next((r for r in pool if r.predictor == rule.predictor and similar(r.text, rule.text)), None)


def induce(
    teacher_lm: dspy.LM,
    brief: TeacherBrief,
    batches: Sequence[Sequence[Mistake]],
    *,
    executor: Executor,
    seed: int,
    on_reply: Callable[[BatchReply], None] | None = None,
    replay: dict[int, BatchReply] | None = None,
) -> list[BatchReply]:
    """Ask the teacher about every batch, in parallel; ``replay`` holds replies saved by an earlier run.

    Returns the replies in batch order. A batch that could not be asked (teacher budget used up, stop requested)
    has no reply. Rollouts and retry seeds are drawn up front from ``seed``, so the replies do not depend on which
    batch finished first."""
    rng = random.Random(seed)
    plans = [(index, batch, None if index == 0 else rng.randrange(1 << 30), rng.randrange(1 << 30))
             for index, batch in enumerate(batches)]

    def ask(plan: tuple[int, Sequence[Mistake], int | None, int]) -> BatchReply | BaseException:
        index, batch, rollout, retry_seed = plan
        if replay and index in replay:
            reply = replay[index]
        else:
            try:
                reply = ask_teacher(teacher_lm, brief, batch, batch_index=index, rollout=rollout,
                                    rng=random.Random(retry_seed))
            except (BudgetExhaustedError, StopRequestedError) as exc:
                return exc
        if on_reply is not None:
            on_reply(reply)
        return reply

    results = executor.map(ask, plans, urgent=True)  # never behind the student jobs already queued
    return [r for r in results if isinstance(r, BatchReply)]
