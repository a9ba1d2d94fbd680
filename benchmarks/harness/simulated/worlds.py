"""The simulated worlds of the task family (scripted students, NOT real models) and their analytic accuracy.

Two effect modes:

- **concept-specific** (``dspy_concept_distill.testing.SimulatedWorld``, the world the tests use): every example
  belongs to a category; a category is answered right iff its concept's phrase is in the instructions of the
  predictor that produces the concept's field, and no harmful distractor there breaks it. A concept's effect is its
  category's share of the examples.
- **diffuse** (``DiffuseWorld`` below), as prompt edits act on real LLMs. Each example ``e`` has a fixed latent
  ``u_e`` ~ U(0, 1); a prompt variant ``v`` (a hash of everything the predictor sees but the current question) also
  draws ``w_{v,e}`` ~ U(0, 1) and re-draws the example with probability ``redraw``. The answer is right iff

      z < p(rules),   z = w_{v,e} if hash(v, e, "redraw") < redraw else u_e,
      p(rules) = clip(baseline + sum of the effects of the pool rules in force, 0, 1),

  then flipped with probability ``flip_rate`` (another hash of ``v`` and ``e``). Over examples P(right) = p(rules)
  exactly, so a helpful rule raises the expected accuracy by its effect. But with ``r = redraw``, an example the
  base prompt gets wrong is fixed by a rule of effect ``d`` only with probability
  (1 - r) (r (p + d) + (1 - r) d / (1 - p)) + r (p + d)   (0.47 for p = 0.4, d = 0.2, r = 0.3),
  and a neutral rule (d = 0) still "fixes" it with probability r p (2 - r) (0.20), because any prompt change
  re-draws some answers (the base prompt's own answers are re-drawn ones too).

A rule is *in force* when its phrase is in the instructions of a predictor whose outputs include the rule's field;
it acts nowhere else. In a two-predictor program (``plan`` -> ``answer``) the plan stage passes its rules in force
and its variant on to the answer stage inside its ``plan`` output (concept mode: ``plan-ok`` / ``plan-bad``).
The *expected accuracy* of a program (``expected_accuracy``) is computed from the rules in force alone, with no
LM call: it is the accuracy the program has on average over examples of the task.

Variants of the task kinds of issue 14 (each used only by the tasks that name it, so the older tasks behave as
before):

- **program shapes** (``PROGRAMS``): ``cot`` (one predictor), ``plan-answer`` (two) and ``notes-agent``
  (``NotesAgent``: a ReAct-style loop of think / look-up steps, then an answer step; five LM calls per run). In the
  notes agent every step passes its prompt variant on in its output (``NotesStudentEngine``), so a prompt change
  anywhere re-draws the answer, as in the plan program; rules act only in the answer step.
- **partial credit** (``partial_credit_metric``): a right answer scores 0.70 + 0.25 c, a wrong one 0.05 + 0.25 c,
  with c ~ U(0, 1) a per-example hash of the question, so no score is ever 0 or 1; the expected score of a
  program is ``partial_credit_expected(p)`` = 0.175 + 0.65 p for expected accuracy p (c is independent of the
  answer being right).
- **subgroups** (``SubgroupWorld``): a concept world with categories that are right without any concept
  (``easy``, like ``plain``) or wrong whatever the instructions (``hard``), and a diagnosing teacher
  (``SubgroupTeacherEngine``) that, for mistakes of the ``subgroup`` category, proposes the tempting rule first
  and its conditional form (the subgroup's concept) right after it, in the same reply.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dspy

from dspy_concept_distill.testing import (
    PLAIN,
    Concept,
    Distractor,
    Prompt,
    ScriptedTeacherEngine,
    SimulatedStudentEngine,
    SimulatedWorld,
    format_reply,
    normalized,
    predictor_for,
    student_values,
)
from dspy_concept_distill.testing import unit_hash as _hash

from .proposer import PoolRule

Stage = tuple[str, tuple[str, ...]]  # (normalized instructions, output field names) of one predictor, in order
_PLAN_TOKEN = re.compile(r"plan-variant ([0-9a-f]+) rules \[([\d,]*)\]")


class PlanThenAnswer(dspy.Module):
    """The two-predictor program of the family: ``plan`` writes a plan, ``answer`` answers with it."""

    def __init__(self) -> None:
        super().__init__()
        self.plan = dspy.Predict("question -> plan")
        self.answer = dspy.ChainOfThought("question, plan -> answer: float")

    def forward(self, question: str) -> dspy.Prediction:
        plan = self.plan(question=question).plan
        return self.answer(question=question, plan=plan)


class NotesAgent(dspy.Module):
    """A ReAct-style agent as DSPy users write it: ``steps`` rounds of a think step and a look-up step that collect
    notes, then an answer step: ``2 * steps + 1`` LM calls per run (5 with the default 2 steps)."""

    def __init__(self, steps: int = 2) -> None:
        super().__init__()
        self.steps = steps
        self.think = dspy.Predict("question, notes -> thought")
        self.lookup = dspy.Predict("question, thought -> note")
        self.answer = dspy.ChainOfThought("question, notes -> answer: float")

    def forward(self, question: str) -> dspy.Prediction:
        notes: list[str] = []
        for _ in range(self.steps):
            thought = self.think(question=question, notes="\n".join(notes) or "(none yet)").thought
            notes.append(self.lookup(question=question, thought=thought).note)
        return self.answer(question=question, notes="\n".join(notes))


NOTES_CALLS_PER_RUN = 2 * 2 + 1
PROGRAMS = {"cot": 1, "plan-answer": 2, "notes-agent": 3}  # program shape -> named predictors


def program_shape(predictors: int, shape: str = "") -> str:
    """The program shape of a task: ``shape`` when given, else by the number of predictors (1: cot, 2:
    plan-answer)."""
    return shape or ("cot" if predictors == 1 else "plan-answer")


def make_program(predictors: int, shape: str = "") -> dspy.Module:
    """The family's programs: ``ChainOfThought("question -> answer: float")``, ``PlanThenAnswer`` or
    ``NotesAgent`` (see ``program_shape``)."""
    shape = program_shape(predictors, shape)
    if shape == "notes-agent":
        return NotesAgent()
    return dspy.ChainOfThought("question -> answer: float") if shape == "cot" else PlanThenAnswer()


def predictor_names(predictors: int, shape: str = "") -> dict[str, str]:
    """Which predictor of ``make_program(predictors, shape)`` produces each field rules can target."""
    shape = program_shape(predictors, shape)
    if shape == "notes-agent":
        return {"answer": "answer.predict"}
    return {"answer": "predict"} if shape == "cot" else {"plan": "plan", "answer": "answer.predict"}


def program_stages(program: dspy.Module) -> list[Stage]:
    return [(normalized(p.signature.instructions), tuple(p.signature.output_fields))
            for _, p in program.named_predictors()]


def rules_in_force(pool: Sequence[PoolRule], stages: Sequence[Stage]) -> list[PoolRule]:
    """The pool rules whose phrase is in the instructions of a predictor that produces their field."""
    return [r for r in pool if any(r.field in fields and r.phrase.lower() in text for text, fields in stages)]


def _flip(p: float, flip_rate: float) -> float:
    return p * (1 - flip_rate) + (1 - p) * flip_rate


# -- concept-specific mode ------------------------------------------------------------------------------------------
def concept_expected_accuracy(world: SimulatedWorld, shares: Mapping[str, float], stages: Sequence[Stage]) -> float:
    """Expected accuracy in the concept world: per category, each stage in order must be right (a wrong plan makes
    the answer wrong), and each stage's result is flipped with ``world.flip_rate``; weighted by category shares."""
    total = 0.0
    for category, share in shares.items():
        p = 1.0
        for text, fields in stages:
            p = _flip(p * world.stage_ok(category, text, fields), world.flip_rate)
        total += share * p
    return total


# -- diffuse mode ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiffuseExample:
    qid: int
    answer: int
    latent: float

    def to_example(self) -> dspy.Example:
        question = f"Q{self.qid}: A shop has {self.answer % 50 + 11} red and {self.answer % 37 + 5} blue items. " \
                   "How many items are there after the day's changes?"
        return dspy.Example(question=question, answer=self.answer).with_inputs("question")


class DiffuseWorld:
    """The diffuse world: a pool of rules with additive effects on the chance of a right answer."""

    def __init__(self, rules: Sequence[PoolRule], *, baseline: float, redraw: float, flip_rate: float = 0.0,
                 seed: int = 0) -> None:
        self.rules = list(rules)
        self.baseline = baseline
        self.redraw = redraw
        self.flip_rate = flip_rate
        self.seed = seed
        self._examples: dict[int, DiffuseExample] = {}
        self._next_qid = 1

    def make_examples(self, n: int) -> list[dspy.Example]:
        made = []
        for _ in range(n):
            qid = self._next_qid
            self._next_qid += 1
            example = DiffuseExample(qid, 100 + int(_hash(self.seed, "answer", qid) * 900),
                                     _hash(self.seed, "latent", qid))
            self._examples[qid] = example
            made.append(example.to_example())
        return made

    def example(self, text: str) -> DiffuseExample | None:
        found = re.search(r"\bQ(\d+)\b", text)
        return self._examples.get(int(found.group(1))) if found else None

    def success_probability(self, active: Sequence[PoolRule]) -> float:
        return min(1.0, max(0.0, self.baseline + sum(r.effect for r in active)))

    def expected_accuracy(self, stages: Sequence[Stage]) -> float:
        return _flip(self.success_probability(rules_in_force(self.rules, stages)), self.flip_rate)

    def correct(self, example: DiffuseExample, variant: str, active: Sequence[PoolRule]) -> bool:
        """Whether ``example`` is answered right by prompt ``variant`` with ``active`` rules in force."""
        redrawn = _hash(self.seed, "redraw", variant, example.qid) < self.redraw
        z = _hash(self.seed, "draw", variant, example.qid) if redrawn else example.latent
        ok = z < self.success_probability(active)
        if self.flip_rate and _hash(self.seed, "flip", variant, example.qid) < self.flip_rate:
            ok = not ok
        return ok

    def student_lm(self, **kwargs) -> dspy.LM:
        return dspy.LM("simulated/diffuse-student", engine=DiffuseStudentEngine(self), **kwargs)

    metric = staticmethod(SimulatedWorld.metric)


class DiffuseStudentEngine(SimulatedStudentEngine):
    """Scripted student of the diffuse world (not a real model); counts its calls in ``calls``. It is the
    concept world's student (``dspy_concept_distill.testing``: same construction, same reply to a request that
    names no example of the world) with the diffuse world's answers."""

    model = "simulated-diffuse-student"

    def reply(self, prompt: Prompt, index: int) -> str:
        example = self.world.example(prompt.user)
        if example is None:  # no question of this world in the request: the concept world's student's reply
            return super().reply(prompt, index)
        fields = [spec.name for spec in prompt.outputs()]
        stage = (normalized(prompt.system), tuple(fields))
        active = rules_in_force(self.world.rules, [stage])
        upstream = _PLAN_TOKEN.search(prompt.user)
        if upstream:
            indices = {int(i) for i in upstream.group(2).split(",") if i}
            active += [r for i, r in enumerate(self.world.rules) if i in indices and r not in active]
        variant = f"{_hash(normalized(prompt.context)):.15f}|{upstream.group(1) if upstream else ''}"
        indices = ",".join(str(self.world.rules.index(r)) for r in active)
        plan = f"plan-variant {int(_hash(variant) * 16**12):012x} rules [{indices}]"
        answer = example.answer if "answer" not in fields or self.world.correct(example, variant, active) \
            else example.answer + 7
        return format_reply(student_values(fields, answer, plan), json_mode=prompt.json_mode)


class NotesStudentEngine(DiffuseStudentEngine):
    """The diffuse world's scripted student for programs whose steps pass notes on (``NotesAgent``; not a real
    model). Every output that is not an answer, a plan or reasoning (a thought, a note) carries the step's prompt
    variant and the rules in force upstream, as a plan does; a step reads every such token in its inputs, so a
    prompt change in any earlier step re-draws the answer."""

    model = "simulated-notes-student"

    def reply(self, prompt: Prompt, index: int) -> str:
        example = self.world.example(prompt.user)
        if example is None:
            return super().reply(prompt, index)
        fields = [spec.name for spec in prompt.outputs()]
        active = rules_in_force(self.world.rules, [(normalized(prompt.system), tuple(fields))])
        upstream = _PLAN_TOKEN.findall(prompt.user)
        for _, indices in upstream:
            found = {int(i) for i in indices.split(",") if i}
            active += [r for i, r in enumerate(self.world.rules) if i in found and r not in active]
        variant = f"{_hash(normalized(prompt.context)):.15f}|{'+'.join(token for token, _ in upstream)}"
        indices = ",".join(str(self.world.rules.index(r)) for r in active)
        token = f"plan-variant {int(_hash(variant) * 16**12):012x} rules [{indices}]"
        answer = example.answer if "answer" not in fields or self.world.correct(example, variant, active) \
            else example.answer + 7
        values = student_values(fields, answer, token)
        values.update({name: f"Noted the quantities ({token})" for name in fields
                       if name not in {"answer", "plan", "reasoning"}})
        return format_reply(values, json_mode=prompt.json_mode)


class NotesDiffuseWorld(DiffuseWorld):
    """The diffuse world with the notes-passing student (``NotesStudentEngine``)."""

    def student_lm(self, **kwargs) -> dspy.LM:
        return dspy.LM("simulated/notes-student", engine=NotesStudentEngine(self), **kwargs)


# -- partial credit -------------------------------------------------------------------------------------------------
RIGHT_BAND, WRONG_BAND, CREDIT_SPAN = 0.70, 0.05, 0.25


def credit(example: dspy.Example) -> float:
    """The per-example component of the partial-credit score: a hash of the question, uniform in [0, 1)."""
    return _hash("credit", example.question)


def partial_credit_metric(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> float:
    """A partial-credit metric: 0.70 + 0.25 c for a right answer, 0.05 + 0.25 c for a wrong or missing one
    (c = ``credit(example)``); never exactly 0 or 1."""
    right = SimulatedWorld.metric(example, prediction)
    return (RIGHT_BAND if right else WRONG_BAND) + CREDIT_SPAN * credit(example)


def partial_credit_expected(accuracy: float) -> float:
    """The expected partial-credit score of a program with expected accuracy ``accuracy`` (E[c] = 1/2)."""
    return WRONG_BAND + CREDIT_SPAN / 2 + (RIGHT_BAND - WRONG_BAND) * accuracy


# -- subgroups: categories beyond concepts, a teacher that proposes the tempting rule first ----------------------------
_OTHER_TEMPLATES = {"easy": "Split the items evenly; how many does each get?",
                    "hard": "The price rises by a share each year; what is it after five years?"}


class SubgroupWorld(SimulatedWorld):
    """A concept world (scripted LMs, not real models) with two more kinds of category besides the concepts':
    ``easy`` ones, right whatever the instructions unless a distractor breaks them (as ``plain``), and ``hard``
    ones, wrong whatever the instructions. Its teacher (``SubgroupTeacherEngine``) proposes ``tempting`` first for
    mistakes of ``subgroup``, and the subgroup's concept (its conditional form) right after it."""

    def __init__(self, concepts: Sequence[Concept], distractors: Sequence[Distractor], *,
                 easy: Sequence[str] = (), hard: Sequence[str] = (), subgroup: str = "", **kwargs) -> None:
        super().__init__(concepts, distractors, **kwargs)
        self.easy, self.hard, self.subgroup = frozenset(easy), frozenset(hard), subgroup

    def example_concept(self, category: str) -> Concept | None:
        """``easy`` and ``hard`` categories have questions of their own; the others are the concept world's."""
        if category in self.easy | self.hard:
            kind = "easy" if category in self.easy else "hard"
            return Concept(category, "", "", template=_OTHER_TEMPLATES[kind])
        return super().example_concept(category)

    def stage_ok(self, category: str, instructions: str, fields: Sequence[str]) -> bool:
        if category in self.hard:
            return "answer" not in fields  # no instruction helps; a plan stage is not judged
        return super().stage_ok(category, instructions, fields)

    @property
    def tempting(self) -> Distractor | None:
        """The distractor that fixes the subgroup and breaks another category."""
        return next((d for d in self.distractors if self.subgroup in d.fixes and d.breaks), None)

    def teacher_lm(self, **kwargs) -> dspy.LM:
        return dspy.LM("simulated/subgroup-teacher", engine=SubgroupTeacherEngine(self), **kwargs)


class SubgroupTeacherEngine(ScriptedTeacherEngine):
    """The diagnosing scripted teacher of ``SubgroupWorld`` (not a real model). As ``ScriptedTeacherEngine``, but
    when the mistakes shown include the subgroup, the reply opens with the tempting rule and, right after it, the
    subgroup's concept (its conditional form), both claiming the subgroup's mistakes; hard categories get no
    concept (the teacher has none to offer); then the other concepts and the remaining distractors."""

    model = "simulated-subgroup-teacher"

    def reply(self, prompt: Prompt, index: int) -> str:
        if index in self.world.bad_teacher_calls:
            return "Sorry, I cannot help with that."
        world: SubgroupWorld = self.world
        values = prompt.inputs("task", "mistakes", "max_rules")
        task = values.get("task", "")
        examples = world.examples_in(values.get("mistakes", ""))
        by_category: dict[str, list[int]] = {}
        for number, ex in enumerate(examples, 1):
            by_category.setdefault(ex.category, []).append(number)
        diagnoses = [f"the student missed the {ex.category} concept" for ex in examples]

        def entry(rule: str, field_name: str, numbers: list[int]) -> dict:
            return {"predictor": predictor_for(task, field_name), "rule": rule, "mistakes": numbers}

        tempting = world.tempting
        rules = []
        first = world.subgroup in by_category and tempting is not None
        if first:
            numbers = by_category[world.subgroup]
            concept = world.concept(world.subgroup)
            rules += [entry(tempting.rule, tempting.field, numbers), entry(self._wording(concept, prompt),
                                                                           concept.field, numbers)]
        for category, numbers in by_category.items():
            concept = world.concept(category)
            if concept is None or category == world.subgroup or category in world.hard:
                continue
            rules.append(entry(self._wording(concept, prompt), concept.field, numbers))
        distractors = [d for d in world.distractors if not (first and d is tempting)]
        start = sum(ex.qid for ex in examples) % len(distractors) if distractors else 0
        for distractor in distractors[start:] + distractors[:start]:
            fixed = [n for c, ns in by_category.items() if c in distractor.fixes for n in ns]
            rules.append(entry(distractor.rule, distractor.field, fixed or [1]))
        limit = re.search(r"\d+", values.get("max_rules", ""))
        if limit:
            rules = rules[: int(limit.group())]
        return format_reply({"analysis": {"diagnoses": diagnoses, "rules": rules}}, json_mode=prompt.json_mode)

    @staticmethod
    def _wording(concept: Concept, prompt: Prompt) -> str:
        return concept.paraphrase if prompt.temperature and concept.paraphrase else concept.rule


# -- both modes -----------------------------------------------------------------------------------------------------
def best_rule_set(pool: Sequence[PoolRule], accuracy_of: Callable[[list[Stage]], float],
                  names: Mapping[str, str]) -> tuple[float, list[PoolRule]]:
    """The highest expected accuracy any subset of ``pool`` reaches (each rule in its own predictor), and the
    smallest subset that reaches it. ``accuracy_of(stages)`` is the world's expected accuracy."""
    best: tuple[float, list[PoolRule]] = (-1.0, [])
    for size in range(len(pool) + 1):
        for subset in itertools.combinations(pool, size):
            accuracy = accuracy_of(stages_with(subset, names))
            if accuracy > best[0] + 1e-12:
                best = (accuracy, list(subset))
    return best


def stages_with(rules: Sequence[PoolRule], names: Mapping[str, str]) -> list[Stage]:
    """The stages of the family program whose predictors hold exactly ``rules`` (each in its field's predictor)."""
    fields = {"plan": ("plan",), "answer": ("reasoning", "answer")}
    return [(normalized(" ".join(r.text for r in rules if r.field == field)), fields[field]) for field in names]


__all__ = ["NOTES_CALLS_PER_RUN", "PLAIN", "PROGRAMS", "DiffuseWorld", "NotesAgent", "NotesDiffuseWorld",
           "NotesStudentEngine", "PlanThenAnswer", "SubgroupTeacherEngine", "SubgroupWorld", "best_rule_set",
           "concept_expected_accuracy", "credit", "make_program", "partial_credit_expected", "partial_credit_metric",
           "predictor_names", "program_shape", "program_stages", "rules_in_force", "stages_with"]
