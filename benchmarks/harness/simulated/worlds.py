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
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dspy

from dspy_concept_distill.testing import (
    PLAIN,
    Prompt,
    SimulatedStudentEngine,
    SimulatedWorld,
    format_reply,
    normalized,
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


def make_program(predictors: int) -> dspy.Module:
    """The family's programs: ``ChainOfThought("question -> answer: float")`` or ``PlanThenAnswer``."""
    return dspy.ChainOfThought("question -> answer: float") if predictors == 1 else PlanThenAnswer()


def predictor_names(predictors: int) -> dict[str, str]:
    """Which predictor of ``make_program(predictors)`` produces each field rules can target."""
    return {"answer": "predict"} if predictors == 1 else {"plan": "plan", "answer": "answer.predict"}


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


__all__ = ["PLAIN", "DiffuseWorld", "PlanThenAnswer", "best_rule_set", "concept_expected_accuracy", "make_program",
           "predictor_names", "program_stages", "rules_in_force", "stages_with"]
