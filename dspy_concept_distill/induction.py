"""Phase 2: the teacher explains batches of mistakes and writes candidate rules.

Teacher calls are DSPy Signatures with typed outputs, run under ``dspy.context(lm=teacher_lm)``. Replies that
do not parse are retried with a fresh rollout, then skipped with a warning. Proposed rules are cleaned up here:
unknown predictors are resolved or rejected, rules that leak training data are rejected, near-duplicates merged.
"""

from __future__ import annotations

import difflib
import functools
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
import pydantic
from dspy.utils.exceptions import LMInvalidRequestError, LMUnsupportedFeatureError

from .budget import TEACHER, Budget, BudgetExhaustedError
from .evaluation import is_lm_infrastructure_error
from .mistakes import Mistake
from .rules import REJECTED, Rule, normalize_rule_text

logger = logging.getLogger(__name__)

MAX_RULE_WORDS = 60
MIN_RULE_WORDS = 3
MAX_ATTEMPTS = 2
LEAK_NGRAM = 8
DUPLICATE_OVERLAP = 0.8
DUPLICATE_JACCARD = 0.5
DUPLICATE_RATIO = 0.85
_STOPWORDS = frozenset(
    "a an the of to in on for and or is are be by with as at it its this that these those from into when if then "
    "than your you always never do not any all each every must should".split()
)
_TRIVIAL_GOLDS = frozenset({"yes", "no", "true", "false", "none", "null", "n/a", "na", "unknown"})


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
    - general: about a kind of problem, never about one example; never state an expected answer and never quote
      an example's input;
    - new: not a restatement of a rule already in force;
    - aimed at exactly one predictor, named exactly as in `task`.
    Prefer a few strong rules over many weak ones, and say which mistakes each rule would prevent."""

    task: str = dspy.InputField(desc="the program's predictors with their input/output fields and instructions")
    rules_in_force: str = dspy.InputField(desc="rules already in the student's instructions, per predictor")
    mistakes: str = dspy.InputField(desc="numbered mistakes of the student")
    max_rules: int = dspy.InputField(desc="write at most this many rules")
    analysis: TeacherAnalysis = dspy.OutputField(desc="a diagnosis of each mistake, then candidate rules")


@functools.cache
def induction_signature(max_rules: int, batch_size: int) -> type[dspy.Signature]:
    """``InduceConcepts`` whose reply schema caps its arrays (``maxItems``): at most ``batch_size`` diagnoses and
    mistake numbers per rule, at most ``max_rules`` rules. With grammar-constrained decoding this keeps a weak
    teacher from looping until it runs out of tokens. (The caps sit on nested models: DSPy drops constraints of
    top-level output fields when it builds the schema.)"""
    rule_model = pydantic.create_model(
        "ProposedRule",
        __base__=ProposedRule,
        mistakes=(list[int], pydantic.Field(default_factory=list, max_length=batch_size,
                                            description="numbers of the mistakes it prevents")),
    )
    analysis_model = pydantic.create_model(
        "TeacherAnalysis",
        diagnoses=(list[str], pydantic.Field(
            max_length=batch_size, description="for each mistake in order, one or two sentences on its cause")),
        rules=(list[rule_model], pydantic.Field(max_length=max_rules, description="candidate rules, best first")),
    )
    return InduceConcepts.with_updated_fields("analysis", type_=analysis_model)


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


def ask_teacher(
    teacher_lm: dspy.LM,
    *,
    task: str,
    rules_in_force: str,
    batch: Sequence[Mistake],
    max_rules: int,
    rollout: int | None,
    retries: int,
    budget: Budget,
    round_index: int,
    batch_index: int,
    rng: random.Random,
) -> BatchReply:
    """One teacher call on one batch, retried with a fresh rollout when the reply does not parse.

    If the provider refuses the request itself (some structured-output APIs reject schema keywords such as
    ``maxItems``), the retry sends the uncapped signature."""
    reply = BatchReply(round=round_index, batch=batch_index, mistake_ids=[m.id for m in batch])
    mistakes_text = "\n\n".join(m.render(i) for i, m in enumerate(batch, 1))
    predict = dspy.Predict(induction_signature(max_rules, max(1, len(batch))))
    for attempt in range(retries + 1):
        lm = teacher_lm
        if rollout is not None or attempt > 0:
            lm = teacher_lm.copy(rollout_id=rollout if attempt == 0 else rng.randrange(1 << 30), temperature=1.0)
        reply.attempts = attempt + 1
        try:
            with budget.track(TEACHER, "induction", reserve=2), dspy.context(lm=lm):
                out = predict(task=task, rules_in_force=rules_in_force, mistakes=mistakes_text, max_rules=max_rules)
            analysis = out.analysis
            reply.diagnoses = [str(d) for d in (analysis.diagnoses or [])]
            reply.rules = [_as_dict(r) for r in (analysis.rules or [])]
            reply.error = None
            return reply
        except BudgetExhaustedError:
            raise
        except Exception as exc:
            reply.error = f"{type(exc).__name__}: {exc}"[:500]
            if is_lm_infrastructure_error(exc):
                logger.warning("teacher LM failed on batch %d of round %d: %s", batch_index, round_index, exc)
                return reply
            if isinstance(exc, (LMInvalidRequestError, LMUnsupportedFeatureError)):
                predict = dspy.Predict(InduceConcepts)
            logger.warning(
                "teacher reply for batch %d of round %d did not parse (attempt %d of %d): %s",
                batch_index, round_index, attempt + 1, retries + 1, reply.error[:200],
            )
    logger.warning("skipping batch %d of round %d: no usable teacher reply", batch_index, round_index)
    return reply


def _as_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, pydantic.BaseModel):
        return item.model_dump()
    if isinstance(item, dict):
        return dict(item)
    return {"rule": str(item)}


class LeakChecker:
    """Rejects rules that leak training data: a gold answer, or a long run of words copied from an example."""

    def __init__(self, trainset: Sequence[dspy.Example], ngram: int = LEAK_NGRAM) -> None:
        self.ngram = ngram
        self._ngrams: set[tuple[str, ...]] = set()
        for ex in trainset:
            for value in ex.values():
                self._ngrams.update(_ngrams(_words(str(value)), ngram))

    def check(self, text: str, golds: Sequence[Any]) -> str | None:
        words = _words(text)
        for gold in golds:
            if _contains_gold(text, words, gold):
                return f"leaks training data: contains the gold answer {str(gold)[:60]!r}"
        copied = next((g for g in _ngrams(words, self.ngram) if g in self._ngrams), None)
        if copied:
            words = " ".join(copied)
            return f"leaks training data: copies {self.ngram} consecutive words from a training example ({words!r})"
        return None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def _contains_gold(text: str, words: list[str], gold: Any) -> bool:
    if isinstance(gold, (list, tuple)):
        return any(_contains_gold(text, words, g) for g in gold)
    value = str(gold).strip()
    number = _number(value)
    if number is not None:
        if number.is_integer() and abs(number) < 10:
            return False  # single digits ("round to 2 places") are not evidence of a leak
        return any(_number(w) == number for w in words)
    if len(value) < 3 or value.lower() in _TRIVIAL_GOLDS:
        return False
    if len(_words(value)) > LEAK_NGRAM:
        return False  # long golds (sentences, code) are caught by the n-gram check instead
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", text.lower()) is not None


def _stem(word: str) -> str:
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if len(word) > 4 and word.endswith(suffix):
            return word[: -len(suffix)] + replacement
    return word


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in _words(text) if w not in _STOPWORDS}


def similar(a: str, b: str) -> bool:
    """Near-duplicate test for rule texts: nearly the same characters, or nearly the same content words (the
    smaller set mostly inside the larger, and the two sets mostly shared)."""
    if difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= DUPLICATE_RATIO:
        return True
    wa, wb = _content_words(a), _content_words(b)
    if not wa or not wb:
        return False
    shared = len(wa & wb)
    return shared / min(len(wa), len(wb)) >= DUPLICATE_OVERLAP and shared / len(wa | wb) >= DUPLICATE_JACCARD


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
    """Turn teacher replies into candidate rules; invalid, leaking and duplicate ones come back rejected.

    ``known_rules`` are rules from earlier rounds (in force or rejected): a near-duplicate of one of them is
    rejected without spending calls on it again, unless it was rejected as a near miss (see ``_worth_retrying``).
    """
    out: list[Rule] = []
    kept: list[Rule] = []
    merged_into: dict[str, Rule] = {}  # rule id -> the kept rule that carries it
    for reply, batch in zip(replies, batches, strict=True):
        for proposal in reply.rules:
            text = normalize_rule_text(str(proposal.get("rule", "")))
            if not text:
                continue
            numbers = [n for n in proposal.get("mistakes", []) or [] if isinstance(n, int) and 1 <= n <= len(batch)]
            sources = [batch[n - 1] for n in numbers] or list(batch)
            target = resolve_predictor(str(proposal.get("predictor", "")), predictor_names)
            rule = Rule(
                text=text,
                predictor=target or str(proposal.get("predictor") or "?"),
                source_mistakes=list(dict.fromkeys(m.id for m in sources)),
                round=round_index,
                batch=reply.batch,
            )
            if rule.id in merged_into or any(r.id == rule.id for r in out):
                # the same text again: more support for the rule that carries it, not another row
                carrier = merged_into.get(rule.id)
                if carrier is not None:
                    carrier.source_mistakes = list(dict.fromkeys([*carrier.source_mistakes, *rule.source_mistakes]))
                continue
            out.append(rule)
            reason = _invalid_reason(rule, target, predictor_names, leak_checker, [m.gold for m in batch])
            if reason:
                rule.reject(reason)
                continue
            original = _find_duplicate(rule, kept)
            if original is not None:
                original.duplicates.append(rule.text)
                original.source_mistakes = list(dict.fromkeys([*original.source_mistakes, *rule.source_mistakes]))
                merged_into[rule.id] = original
                rule.reject(f"near-duplicate of candidate {original.id}, merged into it")
                continue
            earlier = _find_duplicate(rule, known_rules)
            if earlier is not None and _worth_retrying(earlier):
                rule.attempts = earlier.attempts + 1  # proposed again after a near miss: one more, fresh measurement
            elif earlier is not None:
                what = "in force" if earlier.status != REJECTED else f"rejected in round {earlier.round}"
                rule.reject(f"near-duplicate of rule {earlier.id} ({what})")
                continue
            kept.append(rule)
            merged_into[rule.id] = rule
    return out


def _invalid_reason(rule: Rule, target: str | None, names: Sequence[str], leaks: LeakChecker,
                    golds: Sequence[dict[str, Any]]) -> str | None:
    if target is None:
        return f"targets unknown predictor {rule.predictor!r}; the program has {list(names)}"
    words = len(rule.text.split())
    if words > MAX_RULE_WORDS:
        return f"too long ({words} words; a rule has at most {MAX_RULE_WORDS})"
    if words < MIN_RULE_WORDS:
        return f"too short to be an instruction ({words} word(s); a rule has at least {MIN_RULE_WORDS})"
    return leaks.check(rule.text, [v for gold in golds for v in gold.values()])


def _worth_retrying(earlier: Rule) -> bool:
    """A rejected rule the teacher proposes again in a later round is measured once more if it was a near miss:
    it fixed its own source mistakes and did not lose on the valset examples it was scored on (gain >= 0), but
    did not reach ``min_gain``. With a noisy student, one unlucky measurement should not bury a helpful rule for
    good; a rule that lost, or was already measured twice, stays rejected."""
    return (earlier.status == REJECTED and earlier.gain is not None and earlier.gain >= 0
            and earlier.attempts < MAX_ATTEMPTS)


def _find_duplicate(rule: Rule, pool: Sequence[Rule]) -> Rule | None:
    return next((r for r in pool if r.predictor == rule.predictor and similar(r.text, rule.text)), None)


def induce(
    teacher_lm: dspy.LM,
    *,
    batches: Sequence[Sequence[Mistake]],
    task: str,
    rules_in_force: Sequence[Rule],
    max_rules_per_batch: int,
    retries: int,
    budget: Budget,
    round_index: int,
    rng: random.Random,
    on_reply: Callable[[BatchReply], None] | None = None,
    replay: dict[int, BatchReply] | None = None,
) -> list[BatchReply]:
    """Ask the teacher about every batch (in order); ``replay`` holds replies saved by an earlier run."""
    replies = []
    in_force = describe_rules(rules_in_force)
    for index, batch in enumerate(batches):
        rollout = None if index == 0 else rng.randrange(1 << 30)
        if replay and index in replay:
            reply = replay[index]
        else:
            reply = ask_teacher(
                teacher_lm, task=task, rules_in_force=in_force, batch=batch, max_rules=max_rules_per_batch,
                rollout=rollout, retries=retries, budget=budget, round_index=round_index, batch_index=index, rng=rng,
            )
        replies.append(reply)
        if on_reply is not None:
            on_reply(reply)
    return replies
