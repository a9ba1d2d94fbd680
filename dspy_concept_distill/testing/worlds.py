"""A simulated world for deterministic tests and simulated benchmarks: scripted LMs, NOT real language models.

``SimulatedStudentEngine`` is a scripted student: it answers an example correctly only when the concept its
category needs appears in the instructions of the predictor that produces the affected field, and harmful
rules ("distractors") in the instructions break or fix categories as configured. ``ScriptedTeacherEngine``
answers Concept Distillation's teacher signature: it finds the simulated examples anywhere in the ``mistakes``
input and proposes a known mix of helpful, duplicate, harmful and neutral rules. Both plug into real ``dspy.LM``
objects as DSPy 3.4 engines, so everything between them (adapters, parsing, caching, usage tracking, threads) is
real DSPy.

The engines build on ``testing.scripted``: like ``dspy.utils.DummyLM`` they write their replies with
DSPy's own adapters, in the format the request asks for, and read input values back with ``ChatAdapter.parse``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import dspy

from .scripted import Prompt, ScriptedEngine, format_reply, normalized, unit_hash

PLAIN = "plain"
ALL = "*"
_QID = re.compile(r"\bQ(\d+)\b")

# -- the world ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Concept:
    """Knowledge one category of examples needs. ``phrase`` in the instructions of the predictor that produces
    ``field`` makes the student right on that category; ``rule`` is how the teacher words it, ``paraphrase`` a
    near-duplicate wording it uses when it sees the category again."""

    name: str
    phrase: str
    rule: str
    paraphrase: str | None = None
    field: str = "answer"
    template: str = "How many items are there in total?"


@dataclass(frozen=True)
class Distractor:
    """A rule the teacher also proposes: harmful when it ``breaks`` categories (``"*"``: all), tempting when it
    also ``fixes`` some, neutral when it does neither."""

    rule: str
    phrase: str
    breaks: frozenset[str] = frozenset()
    fixes: frozenset[str] = frozenset()
    field: str = "answer"

    @property
    def kind(self) -> str:
        return "harmful" if self.breaks else ("helpful" if self.fixes else "neutral")


@dataclass(frozen=True)
class SimExample:
    qid: int
    category: str
    question: str
    answer: int

    def to_example(self) -> dspy.Example:
        return dspy.Example(question=self.question, answer=self.answer).with_inputs("question")


def default_concepts() -> list[Concept]:
    return [
        Concept("units", "same unit", "Convert every quantity to the same unit before combining them.",
                "Before combining quantities, always convert them all to the same unit.",
                template="A recipe uses 2 cups and 8 tablespoons of milk; how much milk is used?"),
        Concept("leftover", "subtract what was given away",
                "When items are given away, eaten or sold, subtract what was given away before answering.",
                "Always subtract what was given away, eaten or sold before you give the remaining amount.",
                template="Sam had some apples and gave some to friends; how many are left?"),
        Concept("groups", "round up partial groups",
                "When packing items into groups of a fixed size, round up partial groups to a whole group.",
                "If items are packed into groups of a fixed size, round up partial groups so nothing is left out.",
                template="Pens are packed in boxes of 6; how many boxes are needed?"),
    ]


def default_distractors() -> list[Distractor]:
    return [
        Distractor("Always round the final answer up to the next whole number.", "round the final answer up",
                   breaks=frozenset({PLAIN}), fixes=frozenset({"groups"})),
        Distractor("Answer with the number written out in words.", "written out in words", breaks=frozenset({ALL})),
        Distractor("Read the problem carefully before answering.", "read the problem carefully"),
        Distractor("Take your time and double-check your reasoning.", "double-check your reasoning"),
    ]


class SimulatedWorld:
    """Examples, a scripted student and a scripted teacher that agree on which rules help."""

    def __init__(
        self,
        concepts: Sequence[Concept] | None = None,
        distractors: Sequence[Distractor] | None = None,
        *,
        flip_rate: float = 0.0,
        parse_failure_categories: Sequence[str] = (),
        bad_teacher_calls: Sequence[int] = (),
        distractors_first: bool = False,
        seed: int = 0,
    ) -> None:
        self.concepts = list(default_concepts() if concepts is None else concepts)
        self.distractors_first = distractors_first  # the teacher proposes its distractors before the helpful rules
        self.distractors = list(default_distractors() if distractors is None else distractors)
        self.flip_rate = flip_rate
        self.parse_failure_categories = set(parse_failure_categories)
        self.bad_teacher_calls = set(bad_teacher_calls)
        self.seed = seed
        self._examples: dict[int, SimExample] = {}
        self._next_qid = 1
        self._rng = random.Random(seed)

    # -- data -----------------------------------------------------------------------------------------------------
    def concept(self, category: str) -> Concept | None:
        return next((c for c in self.concepts if c.name == category), None)

    def example_concept(self, category: str) -> Concept | None:
        """The concept whose template words the questions of ``category`` (None for ``plain``); a world with other
        kinds of category overrides it."""
        concept = self.concept(category)
        if category != PLAIN and concept is None:
            raise ValueError(f"unknown category {category!r}")
        return concept

    def make_examples(self, per_category: dict[str, int]) -> list[dspy.Example]:
        """New examples (fresh question ids), ``per_category[name]`` of each, shuffled."""
        made = []
        for category, count in per_category.items():
            concept = self.example_concept(category)
            for _ in range(count):
                qid, a, b = self._next_qid, self._rng.randint(11, 60), self._rng.randint(11, 60)
                self._next_qid += 1
                template = concept.template if concept else "What is the total?"
                question = f"Q{qid}: There are {a} red and {b} blue items. {template}"
                made.append(SimExample(qid, category, question, a + b + 3 * qid))
        self._rng.shuffle(made)
        for ex in made:
            self._examples[ex.qid] = ex
        return [ex.to_example() for ex in made]

    def split(
        self, n_train: int, n_val: int, plain_share: float = 0.4
    ) -> tuple[list[dspy.Example], list[dspy.Example]]:
        """Train and val sets with the same mix: ``plain_share`` plain examples, the rest spread over concepts."""
        def mix(n: int) -> dict[str, int]:
            plain = round(n * plain_share)
            counts = {PLAIN: plain}
            rest = n - plain
            for i, c in enumerate(self.concepts):
                counts[c.name] = rest // len(self.concepts) + (1 if i < rest % len(self.concepts) else 0)
            return counts
        return self.make_examples(mix(n_train)), self.make_examples(mix(n_val))

    def example(self, text: str) -> SimExample | None:
        """The first simulated example whose question id appears in ``text``."""
        found = _QID.search(text)
        return self._examples.get(int(found.group(1))) if found else None

    def examples_in(self, text: str) -> list[SimExample]:
        """Every simulated example whose question id appears in ``text``, in order of first appearance."""
        qids = dict.fromkeys(int(q) for q in _QID.findall(text))
        return [self._examples[q] for q in qids if q in self._examples]

    @property
    def helpful_rules(self) -> list[str]:
        return [c.rule for c in self.concepts]

    @property
    def harmful_rules(self) -> list[str]:
        return [d.rule for d in self.distractors if d.kind == "harmful"]

    @property
    def neutral_rules(self) -> list[str]:
        return [d.rule for d in self.distractors if d.kind == "neutral"]

    # -- the student's model --------------------------------------------------------------------------------------
    def stage_ok(self, category: str, instructions: str, fields: Sequence[str]) -> bool:
        """Whether the predictor producing ``fields`` gets an example of ``category`` right with these
        (normalized) instructions, before noise."""
        ok = True
        concept = self.concept(category)
        if concept is not None and concept.field in fields:
            ok = concept.phrase.lower() in instructions
        for distractor in self.distractors:
            if distractor.field not in fields or distractor.phrase.lower() not in instructions:
                continue
            if category in distractor.fixes:
                ok = True
            if ALL in distractor.breaks or category in distractor.breaks:
                ok = False
        return ok

    # -- LMs ------------------------------------------------------------------------------------------------------
    def student_lm(self, **kwargs) -> dspy.LM:
        return dspy.LM("simulated/student", engine=SimulatedStudentEngine(self), **kwargs)

    def teacher_lm(self, **kwargs) -> dspy.LM:
        return dspy.LM("simulated/teacher", engine=ScriptedTeacherEngine(self), **kwargs)

    @staticmethod
    def metric(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> bool:
        try:
            return float(prediction.answer) == float(example.answer)
        except (TypeError, ValueError, AttributeError):
            return False


def student_values(fields: Sequence[str], answer: object, plan: str) -> dict[str, object]:
    """A scripted student's output values: ``answer``, ``plan``, a fixed ``reasoning``, "n/a" for anything else."""
    fixed = {"answer": answer, "plan": plan, "reasoning": "Let me work through the quantities."}
    return {name: fixed.get(name, "n/a") for name in fields}


class SimulatedStudentEngine(ScriptedEngine):
    """Scripted student (not a real model). A ``plan`` output says ``plan-ok`` or ``plan-bad``; an answer given
    with a ``plan-bad`` plan in its inputs is wrong. With ``world.flip_rate`` > 0, each new prompt flips that share
    of the answers (a deterministic hash of instructions, question and fields)."""

    def __init__(self, world: SimulatedWorld) -> None:
        super().__init__()
        self.world = world

    def reply(self, prompt: Prompt, index: int) -> str:
        fields = [spec.name for spec in prompt.outputs()]
        example = self.world.example(prompt.user)
        if example is None:
            return format_reply({f: "unknown" for f in fields}, json_mode=prompt.json_mode)
        ok = self.correct(prompt, example, fields)
        if not ok and example.category in self.world.parse_failure_categories:
            return f"I think it is around {example.answer + 7} or so."
        plan = "plan-ok: combine the quantities correctly" if ok else "plan-bad: add the numbers"
        return format_reply(student_values(fields, example.answer if ok else example.answer + 7, plan),
                            json_mode=prompt.json_mode)

    def correct(self, prompt: Prompt, example: SimExample, fields: list[str]) -> bool:
        system = normalized(prompt.system)
        ok = self.world.stage_ok(example.category, system, fields)
        if "answer" in fields and "plan-bad" in prompt.user.lower():
            ok = False
        if self.world.flip_rate and self._noise(system, example, fields) < self.world.flip_rate:
            ok = not ok
        return ok

    def _noise(self, system: str, example: SimExample, fields: list[str]) -> float:
        return unit_hash(f"{self.world.seed}|{system}|{example.qid}|{fields}")


class ScriptedTeacherEngine(ScriptedEngine):
    """Scripted teacher (not a real model) for Concept Distillation's ``InduceConcepts`` signature.

    It finds the simulated examples anywhere in the ``mistakes`` input; mistake ``k`` is the ``k``-th example to
    appear. Each call: the helpful rule for every category among those mistakes (its paraphrase, a near-duplicate,
    when the call is a sampled rollout at temperature > 0, as Concept Distillation's later batches are), then the
    distractors, starting at one picked from the mistakes shown (the distractors first with
    ``world.distractors_first``), cut to ``max_rules``. It keeps no memory between
    calls, so its replies do not depend on the order in which parallel calls arrive. Calls listed in
    ``world.bad_teacher_calls`` (0-based, counting DSPy's JSON-fallback calls) get an unparseable reply.
    """

    model = "simulated-teacher"

    def __init__(self, world: SimulatedWorld) -> None:
        super().__init__()
        self.world = world

    def reply(self, prompt: Prompt, index: int) -> str:
        if index in self.world.bad_teacher_calls:
            return "Sorry, I cannot help with that."
        values = prompt.inputs("task", "mistakes", "max_rules")
        task = values.get("task", "")
        examples = self.world.examples_in(values.get("mistakes", ""))
        by_category: dict[str, list[int]] = {}
        for number, ex in enumerate(examples, 1):
            by_category.setdefault(ex.category, []).append(number)
        diagnoses = [f"the student missed the {ex.category} concept" for ex in examples]
        rules = []
        for category, numbers in by_category.items():
            concept = self.world.concept(category)
            if concept is None:
                continue
            text = concept.paraphrase if prompt.temperature and concept.paraphrase else concept.rule
            rules.append({"predictor": predictor_for(task, concept.field), "rule": text, "mistakes": numbers})
        distractors = self.world.distractors
        start = sum(ex.qid for ex in examples) % len(distractors) if distractors else 0
        proposed = []
        for distractor in distractors[start:] + distractors[:start]:
            fixed = [n for c, ns in by_category.items() if c in distractor.fixes for n in ns]
            proposed.append({"predictor": predictor_for(task, distractor.field), "rule": distractor.rule,
                             "mistakes": fixed or [1]})
        rules = proposed + rules if self.world.distractors_first else rules + proposed
        limit = re.search(r"\d+", values.get("max_rules", ""))
        if limit:
            rules = rules[: int(limit.group())]
        return format_reply({"analysis": {"diagnoses": diagnoses, "rules": rules}}, json_mode=prompt.json_mode)


def predictor_for(task: str, output_field: str) -> str:
    """The predictor whose outputs include ``output_field``, from a program description such as Concept
    Distillation's ``task`` input: each paragraph describes one predictor and names it first, in backticks, then
    lists its fields, outputs after the word "outputs". The first predictor if none matches."""
    names = []
    for paragraph in re.split(r"\n\s*\n", task):
        quoted = re.findall(r"`([^`]+)`", paragraph)
        if not quoted:
            continue
        names.append(quoted[0])
        outputs = paragraph.split("outputs", 1)[1] if "outputs" in paragraph else ""
        if f"`{output_field}`" in outputs.split("instructions", 1)[0]:
            return quoted[0]
    return names[0] if names else "predict"


@dataclass
class SimulatedTask:
    """A ready-made benchmark task in the simulated world: data, LMs and the rules a perfect run keeps."""

    world: SimulatedWorld
    trainset: list[dspy.Example] = field(default_factory=list)
    valset: list[dspy.Example] = field(default_factory=list)

    @classmethod
    def create(cls, n_train: int = 20, n_val: int = 20, *, seed: int = 0, flip_rate: float = 0.0) -> SimulatedTask:
        world = SimulatedWorld(flip_rate=flip_rate, seed=seed)
        train, val = world.split(n_train, n_val)
        return cls(world, train, val)
