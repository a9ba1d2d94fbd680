"""Phase 2: the teacher explains batches of mistakes and writes candidate rules.

Teacher calls are DSPy Signatures with typed outputs, run under ``dspy.context(lm=teacher_lm)``. Replies that
do not parse are retried with a fresh rollout, then skipped with a warning. Each reply's rules come back as
``Proposal`` records; ``proposals`` turns them into candidate rules.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
import pydantic
from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedFeatureError

from ..records import BatchReply, ErrorKind, Mistake, Proposal
from ..rules import Rule
from ..runtime.evaluator import is_lm_infrastructure_error
from ..runtime.executor import Executor, StopRequestedError
from ..runtime.logs import folded_warnings, one_line, warn_folded
from ..runtime.metering import Budget, BudgetExhaustedError, Role, metering
from ..text import clip_text

logger = logging.getLogger(__name__)

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
        # rule_model is a class made at run time: mypy cannot take it as a type
        rules=(list[rule_model], capped(max_rules, "candidate rules, best first")),  # type: ignore[valid-type]
    )
    return InduceConcepts.with_updated_fields("analysis", type_=analysis_model)


def _keep_first(field_name: str, cap: int, what: str) -> Any:
    """A pydantic before-validator that keeps the first ``cap`` items of a list field and logs what it drops, so
    a reply over a schema cap still parses."""
    def keep_first(cls: type, items: Any) -> Any:
        if isinstance(items, list) and len(items) > cap:
            warn_folded(logger, f"over the cap: {what}", "teacher wrote %d %s where at most %d were asked for; kept "
                        "the first %d, dropped the other %d", len(items), what, cap, cap, len(items) - cap)
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


FIELD_LIMIT = 1200  # characters of one field value shown to the teacher


@dataclass(frozen=True)
class ProgramFields:
    """The fields the program's predictors read (inputs) and write (outputs): all of an example the teacher is shown.
    Other example fields (an ``id``, a ``source``, a reference ``rationale``) reach no predictor, and only fields some
    predictor writes can be gold labels the student missed."""

    reads: frozenset[str]
    writes: frozenset[str]


def program_fields(program: dspy.Module) -> ProgramFields:
    reads: set[str] = set()
    writes: set[str] = set()
    for _, predictor in program.named_predictors():
        reads |= set(predictor.signature.input_fields)
        writes |= set(predictor.signature.output_fields)
    return ProgramFields(frozenset(reads), frozenset(writes))


def render_mistake(mistake: Mistake, number: int, fields: ProgramFields | None = None) -> str:
    """The mistake as the teacher reads it. With ``fields`` (see ``program_fields``), only the example fields some
    predictor reads or writes are shown, and only fields some predictor writes as gold labels."""
    inputs, gold = mistake.inputs, mistake.gold
    if fields is not None:
        inputs = {k: v for k, v in inputs.items() if k in fields.reads or k in fields.writes}
        gold = {k: v for k, v in gold.items() if k in fields.writes}
    lines = [f"### Mistake {number}", "Inputs:"]
    lines += [f"  {k}: {_clip(v)}" for k, v in inputs.items()]
    lines.append("Expected (gold labels):")
    lines += [f"  {k}: {_clip(v)}" for k, v in gold.items()] or ["  (none given)"]
    lines.append("What the student did:")
    for step in mistake.steps:
        lines.append(f"  [{step.predictor}]")
        lines += [f"    input {k}: {_clip(v)}" for k, v in step.inputs.items() if inputs.get(k) != v]
        lines += [f"    {k}: {_clip(v)}" for k, v in step.outputs.items()]
    if mistake.error_kind == ErrorKind.PARSE:
        where = f" of predictor `{mistake.failed_predictor}`" if mistake.failed_predictor else ""
        lines.append(f"  The reply{where} could not be parsed into the output fields. "
                     f"Raw reply: {_clip(mistake.raw_text)}")
    elif mistake.error_kind == ErrorKind.METRIC:
        lines.append("  The metric failed on this output (an error in the metric, not in the program): "
                     f"{_clip(mistake.error)}")
    elif mistake.error:
        lines.append(f"  The program raised: {_clip(mistake.error)}")
    lines.append(f"Score: {mistake.score:g}")
    if mistake.feedback:
        lines.append(f"Metric feedback: {_clip(mistake.feedback)}")
    return "\n".join(lines)


def _clip(value: Any, limit: int = FIELD_LIMIT) -> str:
    """A field value for the teacher: clipped to ``limit`` characters, multi-line text indented as a block."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text.strip()
    if len(text) > limit:
        text = text[:limit] + " [...]"
    return text.replace("\n", "\n    ") if "\n" in text else text


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
    fields: ProgramFields | None = None  # what of each example the teacher is shown (None: every field)


def ask_teacher(
    teacher_lm: dspy.LM,
    brief: TeacherBrief,
    batch: Sequence[Mistake],
    *,
    batch_index: int,
    rollout: int | None,
    rng: random.Random,
    budget: Budget | None = None,
) -> BatchReply:
    """One teacher call on one batch, retried with a fresh rollout when the reply does not parse. With ``budget``,
    every request the call makes is metered: it takes a permit from ``budget`` and is booked as the teacher's.

    If the provider refuses the request itself (some structured-output APIs reject schema keywords such as
    ``maxItems``), the retry sends the uncapped signature."""
    reply = BatchReply(round=brief.round_index, batch=batch_index, mistake_ids=[m.id for m in batch])
    mistakes_text = "\n\n".join(render_mistake(m, i, brief.fields) for i, m in enumerate(batch, 1))
    predict = dspy.Predict(induction_signature(brief.max_rules, max(1, len(batch))))
    for attempt in range(brief.retries + 1):
        lm = teacher_lm
        if rollout is not None or attempt > 0:
            lm = teacher_lm.copy(rollout_id=rollout if attempt == 0 else rng.randrange(1 << 30), temperature=1.0)
        reply.attempts = attempt + 1
        try:
            with _metered(budget), dspy.context(lm=lm):
                out = predict(task=brief.task, rules_in_force=brief.rules_in_force, mistakes=mistakes_text,
                              max_rules=brief.max_rules)
            analysis = out.analysis
            reply.diagnoses = [clip_text(d, MAX_DIAGNOSIS_CHARS) for d in (analysis.diagnoses or [])]
            reply.rules = [_proposal(r) for r in (analysis.rules or [])]
            reply.error = None
            return reply
        except (BudgetExhaustedError, StopRequestedError):
            raise
        except Exception as exc:
            reply.error = one_line(f"{type(exc).__name__}: {exc}", 500)
            number = brief.round_index + 1
            if is_lm_infrastructure_error(exc):
                logger.debug("teacher LM failed on batch %d of round %d: %s", batch_index + 1, number, reply.error)
                warn_folded(logger, "teacher LM failed", "round %d: the teacher LM failed on a batch (asked again on "
                            "resume): %s", number, one_line(reply.error, 200))
                reply.transient = True
                return reply
            if isinstance(exc, (LMInvalidRequestError, LMUnsupportedFeatureError)):
                predict = dspy.Predict(induction_signature(brief.max_rules, max(1, len(batch)), schema_caps=False))
            logger.debug("teacher reply for batch %d of round %d did not parse (attempt %d of %d): %s",
                         batch_index + 1, number, attempt + 1, brief.retries + 1, reply.error)
            warn_folded(logger, "teacher reply did not parse", "round %d: a teacher reply did not parse (each batch "
                        "gets %d attempt(s), a fresh rollout each): %s", number, brief.retries + 1,
                        one_line(reply.error, 200))
    warn_folded(logger, "batch skipped", "round %d: a batch of mistakes was skipped: no usable teacher reply after %d "
                "attempt(s)", brief.round_index + 1, brief.retries + 1)
    return reply


def _metered(budget: Budget | None) -> Any:
    return contextlib.nullcontext() if budget is None else metering(budget, Role.TEACHER, "induction")


def _proposal(item: Any) -> Proposal:
    """A rule of the teacher's reply as a record (a ``ProposedRule`` model; a dict or text, leniently)."""
    if isinstance(item, pydantic.BaseModel):
        item = item.model_dump()
    return Proposal.from_dict(item if isinstance(item, dict) else {"rule": str(item)})


def induce(
    teacher_lm: dspy.LM,
    brief: TeacherBrief,
    batches: Sequence[Sequence[Mistake]],
    *,
    executor: Executor,
    seed: int,
    on_reply: Callable[[BatchReply], None] | None = None,
    replay: dict[int, BatchReply] | None = None,
    budget: Budget | None = None,
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
                                    rng=random.Random(retry_seed), budget=budget)
            except (BudgetExhaustedError, StopRequestedError) as exc:
                return exc
        if on_reply is not None:
            on_reply(reply)
        return reply

    with folded_warnings():  # one line per kind of teacher failure, with a count, when the round's replies are in
        results = executor.map(ask, plans, urgent=True)  # never behind the student jobs already queued
    return [r for r in results if isinstance(r, BatchReply)]
