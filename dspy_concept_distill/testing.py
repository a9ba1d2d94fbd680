"""A simulated world for deterministic tests and the simulated benchmark: NOT real language models.

``SimulatedStudentEngine`` is a scripted student: it answers an example correctly only when the concept its
category needs appears in the instructions of the predictor that produces the affected field, and harmful
rules ("distractors") in the instructions break or fix categories as configured. ``ScriptedTeacherEngine``
reads the mistakes in Concept Distillation's teacher prompt and proposes a known mix of helpful, duplicate,
harmful and neutral rules. Both plug into real ``dspy.LM`` objects as DSPy 3.4 engines, so everything between
them (adapters, parsing, caching, usage tracking, threads) is real DSPy.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage

PLAIN = "plain"
ALL = "*"


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
        seed: int = 0,
    ) -> None:
        self.concepts = list(default_concepts() if concepts is None else concepts)
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

    def make_examples(self, per_category: dict[str, int]) -> list[dspy.Example]:
        """New examples (fresh question ids), ``per_category[name]`` of each, shuffled."""
        made = []
        for category, count in per_category.items():
            concept = self.concept(category)
            if category != PLAIN and concept is None:
                raise ValueError(f"unknown category {category!r}")
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
        found = re.search(r"\bQ(\d+)\b", text)
        return self._examples.get(int(found.group(1))) if found else None

    @property
    def helpful_rules(self) -> list[str]:
        return [c.rule for c in self.concepts]

    @property
    def harmful_rules(self) -> list[str]:
        return [d.rule for d in self.distractors if d.kind == "harmful"]

    @property
    def neutral_rules(self) -> list[str]:
        return [d.rule for d in self.distractors if d.kind == "neutral"]

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


def _response(text: str, prompt_chars: int) -> Response:
    return Response(
        id=None, model="simulated", message=Message.assistant([TextPart(text)]), finish_reason="stop",
        usage=Usage(input_tokens=max(1, prompt_chars // 4), output_tokens=max(1, len(text) // 4)),
    )


def _system_text(request) -> str:
    system = request.system
    if system is None:
        return ""
    return system if isinstance(system, str) else "".join(getattr(p, "text", "") for p in system)


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def _output_fields(system: str) -> list[str]:
    section = system.split("Your output fields are:", 1)[-1].split("All interactions", 1)[0]
    return re.findall(r"^\d+\. `(\w+)`", section, flags=re.M)


def _chat_reply(values: dict[str, object]) -> str:
    parts = [f"[[ ## {name} ## ]]\n{value}" for name, value in values.items()]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


class SimulatedStudentEngine:
    """Scripted student (not a real model); counts its calls in ``calls``."""

    def __init__(self, world: SimulatedWorld) -> None:
        self.world = world
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, request) -> Response:
        with self._lock:
            self.calls += 1
        system = _system_text(request)
        user = next((m.text or "" for m in reversed(request.messages) if m.role == "user"), "")  # not the demos
        fields = _output_fields(system)
        example = self.world.example(user)
        if example is None:
            return _response(_chat_reply({f: "unknown" for f in fields}), len(system) + len(user))
        ok = self._stage_ok(example, _normalized(system), fields)
        if "answer" in fields and "[[ ## plan ## ]]" in user and "plan-ok" not in user.lower():
            ok = False
        if self.world.flip_rate and self._noise(system, example, fields) < self.world.flip_rate:
            ok = not ok
        if not ok and example.category in self.world.parse_failure_categories:
            return _response(f"I think it is around {example.answer + 7} or so.", len(system) + len(user))
        values: dict[str, object] = {}
        for name in fields:
            if name == "reasoning":
                values[name] = "Let me work through the quantities."
            elif name == "answer":
                values[name] = example.answer if ok else example.answer + 7
            elif name == "plan":
                values[name] = "plan-ok: combine the quantities correctly" if ok else "plan-bad: add the numbers"
            else:
                values[name] = "n/a"
        return _response(_chat_reply(values), len(system) + len(user))

    def _stage_ok(self, example: SimExample, system: str, fields: list[str]) -> bool:
        ok = True
        concept = self.world.concept(example.category)
        if concept is not None and concept.field in fields:
            ok = concept.phrase.lower() in system
        for distractor in self.world.distractors:
            if distractor.field not in fields or distractor.phrase.lower() not in system:
                continue
            if example.category in distractor.fixes:
                ok = True
            if ALL in distractor.breaks or example.category in distractor.breaks:
                ok = False
        return ok

    def _noise(self, system: str, example: SimExample, fields: list[str]) -> float:
        digest = hashlib.sha256(f"{self.world.seed}|{_normalized(system)}|{example.qid}|{fields}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def close(self) -> None:
        pass


class ScriptedTeacherEngine:
    """Scripted teacher (not a real model) for Concept Distillation's induction prompt.

    Each call: the helpful rule for every category among the mistakes shown (its paraphrase if it proposed that
    rule in an earlier call, which is a near-duplicate), then the distractors it has not proposed yet, cut to the
    prompt's ``max_rules``. Calls listed in ``world.bad_teacher_calls`` (0-based, counting DSPy's JSON-fallback
    calls) get an unparseable reply. Counts its calls in ``calls``.
    """

    def __init__(self, world: SimulatedWorld) -> None:
        self.world = world
        self.calls = 0
        self.proposed: set[str] = set()
        self._lock = threading.Lock()

    def complete(self, request) -> Response:
        with self._lock:
            index = self.calls
            self.calls += 1
        user = "\n".join(m.text or "" for m in request.messages if m.role == "user")
        prompt_chars = len(_system_text(request)) + len(user)
        if index in self.world.bad_teacher_calls:
            return _response("Sorry, I cannot help with that.", prompt_chars)
        task = user.split("[[ ## rules_in_force ## ]]", 1)[0]
        mistakes_text = user.split("[[ ## mistakes ## ]]", 1)[-1].split("[[ ## max_rules ## ]]", 1)[0]
        mistakes = re.split(r"### Mistake \d+", mistakes_text)[1:]
        examples = [self.world.example(m) for m in mistakes]
        diagnoses, rules = [], []
        by_category: dict[str, list[int]] = {}
        for number, ex in enumerate(examples, 1):
            if ex is None:
                continue
            by_category.setdefault(ex.category, []).append(number)
            diagnoses.append(f"the student missed the {ex.category} concept")
        for category, numbers in by_category.items():
            concept = self.world.concept(category)
            if concept is None:
                continue
            with self._lock:
                seen = concept.rule in self.proposed
                self.proposed.add(concept.rule)
            text = concept.paraphrase if seen and concept.paraphrase else concept.rule
            rules.append({"predictor": _predictor_for(task, concept.field), "rule": text, "mistakes": numbers})
        for distractor in self.world.distractors:
            with self._lock:
                if distractor.rule in self.proposed:
                    continue
                self.proposed.add(distractor.rule)
            fixed = [n for c, ns in by_category.items() if c in distractor.fixes for n in ns]
            rules.append({"predictor": _predictor_for(task, distractor.field), "rule": distractor.rule,
                          "mistakes": fixed or [1]})
        limit = re.search(r"\[\[ ## max_rules ## \]\]\s*(\d+)", user)
        if limit:
            rules = rules[: int(limit.group(1))]
        reply = _chat_reply({"analysis": json.dumps({"diagnoses": diagnoses, "rules": rules})})
        return _response(reply, prompt_chars)

    def close(self) -> None:
        pass


def _predictor_for(task: str, output_field: str) -> str:
    """The predictor (as named in the task description) whose outputs include ``output_field``."""
    for name, outputs in re.findall(r"Predictor `([^`]+)`\s*\n\s*inputs:[^\n]*\n\s*outputs: ([^\n]*)", task):
        if f"`{output_field}`" in outputs:
            return name
    found = re.search(r"Predictor `([^`]+)`", task)
    return found.group(1) if found else "predict"


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
