"""A simulated world for deterministic tests and simulated benchmarks: scripted LMs, NOT real language models.

``SimulatedStudentEngine`` is a scripted student: it answers an example correctly only when the concept its
category needs appears in the instructions of the predictor that produces the affected field, and harmful
rules ("distractors") in the instructions break or fix categories as configured. ``ScriptedTeacherEngine``
answers Concept Distillation's teacher signature: it finds the simulated examples anywhere in the ``mistakes``
input and proposes a known mix of helpful, duplicate, harmful and neutral rules. Both plug into real ``dspy.LM``
objects as DSPy 3.4 engines, so everything between them (adapters, parsing, caching, usage tracking, threads) is
real DSPy.

Like ``dspy.utils.DummyLM``, the engines write their replies with DSPy's own adapters
(``format_field_with_value``), in the format the request asks for (ChatAdapter field markers or a JSONAdapter
object), and read input values back with ``ChatAdapter.parse``; what they read from a prompt is what any LM reads:
the instructions, the output fields it is asked for, and the input values.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.adapters.chat_adapter import FieldInfoWithName, field_header_pattern
from dspy.lm15 import Message, Response, TextPart, Usage

PLAIN = "plain"
ALL = "*"
_FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \((.+?)\)", flags=re.M)
_SCHEMA_NOTE = "must adhere to the JSON schema: "
_QID = re.compile(r"\bQ(\d+)\b")


# -- reading a request, writing a reply ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputSpec:
    """One output field a request asks for: its name, the type name DSPy shows, and its JSON schema if any."""

    name: str
    type_name: str
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Prompt:
    """One request as a scripted engine reads it."""

    system: str
    turns: tuple[tuple[str, str], ...]  # (role, text) of every message after the system message
    json_mode: bool
    temperature: float | None = None

    @classmethod
    def of(cls, request: Any) -> Prompt:
        system = request.system
        if system is not None and not isinstance(system, str):
            system = "".join(getattr(part, "text", "") or "" for part in system)
        turns = tuple((m.role, m.text or "") for m in request.messages)
        json_mode = "Outputs will be a JSON object" in (system or "") or request.config.response_format is not None
        return cls(system or "", turns, json_mode, request.config.temperature)

    @property
    def user(self) -> str:
        """The last user message (the current inputs; earlier turns are demos)."""
        return next((text for role, text in reversed(self.turns) if role == "user"), "")

    @property
    def context(self) -> str:
        """Everything but the last user message: instructions, field descriptions and demos."""
        last = max((i for i, (role, _) in enumerate(self.turns) if role == "user"), default=len(self.turns))
        return "\n".join([self.system, *(f"{role}: {text}" for role, text in self.turns[:last])])

    @property
    def chars(self) -> int:
        return len(self.system) + sum(len(text) for _, text in self.turns)

    def outputs(self) -> list[OutputSpec]:
        """The output fields DSPy's adapter lists in the system message, with the JSON schema of typed ones."""
        if "Your output fields are:" not in self.system:
            return []
        section = self.system.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
        found = _FIELD_LINE.findall(section)
        return [OutputSpec(name, type_name.strip(), self._schema(name)) for name, type_name in found]

    def input_names(self) -> list[str]:
        """The input field names DSPy's adapter lists in the system message."""
        section = self.system.split("Your input fields are:", 1)[-1].split("Your output fields are:", 1)[0]
        return [name for name, _ in _FIELD_LINE.findall(section)] if "Your input fields are:" in self.system else []

    def _schema(self, name: str) -> dict[str, Any] | None:
        marker = re.search(r"\{" + re.escape(name) + r"\}\s+# note: the value you produce " + re.escape(_SCHEMA_NOTE),
                           self.system)
        if marker is None:
            return None
        rest = self.system[marker.end():]
        for text in (rest, rest.replace('\\"', '"')):  # JSONAdapter shows the note inside a JSON string
            try:
                return json.JSONDecoder().raw_decode(text)[0]
            except ValueError:
                continue
        return None

    def inputs(self, *names: str) -> dict[str, str]:
        """Raw values of the named input fields in the last user message, read with ``ChatAdapter.parse``."""
        present = {m.group(1) for line in self.user.splitlines() if (m := field_header_pattern.match(line.strip()))}
        wanted = [n for n in names if n in present]
        if not wanted:
            return {}
        reader = dspy.Signature({n: (str, dspy.OutputField()) for n in wanted}, "inputs as text")
        values = dspy.ChatAdapter().parse(reader, self.user)
        # the adapter closes the user message with its "Respond with ..." paragraph: not part of the last input
        return {name: re.sub(r"\n\nRespond with [^\n]*\Z", "", value) for name, value in values.items()}


def format_reply(values: dict[str, Any], *, json_mode: bool) -> str:
    """The reply an LM gives with these output values, written by DSPy's adapter as ``DummyLM`` does."""
    fields = {FieldInfoWithName(name=name, info=dspy.OutputField()): value for name, value in values.items()}
    if json_mode:
        return dspy.JSONAdapter().format_field_with_value(fields, role="assistant")
    return dspy.ChatAdapter().format_field_with_value(fields)


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def unit_hash(*parts: object) -> float:
    """A deterministic uniform number in [0, 1) for ``parts``."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ScriptedEngine:
    """Base of the scripted engines (not real models): counts calls in ``calls``, reads each request as a
    ``Prompt`` and returns ``reply(prompt, index)`` as the response text, with token counts of about 4 characters
    per token. ``index`` is the 0-based number of the call."""

    model = "simulated"

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def complete(self, request: Any) -> Response:
        with self._lock:
            index = self.calls
            self.calls += 1
        prompt = Prompt.of(request)
        text = self.reply(prompt, index)
        return Response(
            id=None, model=self.model, message=Message.assistant([TextPart(text)]), finish_reason="stop",
            usage=Usage(input_tokens=max(1, prompt.chars // 4), output_tokens=max(1, len(text) // 4)),
        )

    def reply(self, prompt: Prompt, index: int) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


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
        return format_reply(values, json_mode=prompt.json_mode)

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
    distractors, starting at one picked from the mistakes shown, cut to ``max_rules``. It keeps no memory between
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
        for distractor in distractors[start:] + distractors[:start]:
            fixed = [n for c, ns in by_category.items() if c in distractor.fixes for n in ns]
            rules.append({"predictor": predictor_for(task, distractor.field), "rule": distractor.rule,
                          "mistakes": fixed or [1]})
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
