"""A scripted prompt/teacher model for DSPy's own optimizers in the simulated world: NOT a real language model.

COPRO, InferRules, MIPROv2, GEPA and SIMBA all need an LM that writes instructions (their ``prompt_model``,
``reflection_lm`` or teacher). ``SimulatedProposerEngine`` plays that part against a ``SimulatedWorld``: it answers
any DSPy signature (ChatAdapter or JSONAdapter formatting, read from the system message DSPy sends) and plain
prompts (answered with the instruction in a fenced block, as the standalone ``gepa`` package expects).

Every output that is an instruction (a ``str`` field that is not a description, summary, reasoning or prefix; the
values of a ``dict[str, str]`` field; the items of a ``list[str]`` field named like rules) gets a fresh proposal:
each helpful concept rule of the world is included with probability ``p_helpful`` and each distractor rule with
probability ``p_distractor``, independently, from a seeded RNG. The proposer never reads the prompt to pick rules,
so an optimizer reaches the best rule set only by searching over proposals, not by being handed it. Other outputs
get type-valid filler (numbers, booleans, lists, dicts, the first ``Literal`` option) that carries no rule phrase.
"""

from __future__ import annotations

import ast
import json
import random
import re
import threading
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.lm15 import Message, Request, Response, TextPart, Usage

from dspy_concept_distill.testing import SimulatedWorld

BASE_INSTRUCTION = "Solve the arithmetic word problem step by step and reply with the final number."
NEUTRAL_TEXT = "The examples are short arithmetic word problems about counts of items; each answer is one number."
NEUTRAL_REASONING = "Comparing the examples, the instruction should say how to treat the quantities in the question."
PREFIX_TEXT = "Answer:"

_NEUTRAL_NAME = re.compile(r"reason|descri|summar|observ|discuss|prefix|rational|analys|thought|explan|feedback")
_RULE_LIST_NAME = re.compile(r"rule|instruction|guideline|principle|advice|tip|propos")
_FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \((.+?)\):", flags=re.M)
_INPUT_BLOCK = re.compile(r"\[\[ ## (\w+) ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)", flags=re.S)


@dataclass(frozen=True)
class OutputSpec:
    """One output field DSPy asks for: its name and the type name it shows in the system message."""

    name: str
    type_name: str


def system_text(request: Request) -> str:
    """The system message of ``request`` as one string (empty when there is none)."""
    system = request.system
    if system is None:
        return ""
    return system if isinstance(system, str) else "".join(getattr(part, "text", "") or "" for part in system)


def user_text(request: Request) -> str:
    """All user messages of ``request``, joined by newlines."""
    return "\n".join(message.text or "" for message in request.messages if message.role == "user")


def parse_output_fields(system: str) -> list[OutputSpec]:
    """The output fields and their type names, from the "Your output fields are:" list DSPy adapters write."""
    if "Your output fields are:" not in system:
        return []
    section = system.split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
    return [OutputSpec(name, type_name.strip()) for name, type_name in _FIELD_LINE.findall(section)]


def parse_input_values(user: str) -> dict[str, str]:
    """Input field values from a ChatAdapter/JSONAdapter user message (``[[ ## name ## ]]`` blocks)."""
    return {name: value.strip() for name, value in _INPUT_BLOCK.findall(user)}


def is_json_mode(system: str, request: Request) -> bool:
    """True when the adapter expects a JSON object (JSONAdapter), False for ChatAdapter's field markers."""
    return "Outputs will be a JSON object" in system or request.config.response_format is not None


def split_type_args(inner: str) -> list[str]:
    """Split ``"str, dict[str, Any]"`` at top-level commas only."""
    parts, depth, current = [], 0, []
    for char in inner:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _generic(type_name: str) -> tuple[str, list[str]]:
    """``"list[dict[str, Any]]"`` -> ``("list", ["dict[str, Any]"])``; ``"int"`` -> ``("int", [])``."""
    if "[" in type_name and type_name.endswith("]"):
        head, inner = type_name.split("[", 1)
        return head.strip(), split_type_args(inner[:-1])
    return type_name.strip(), []


class SimulatedProposerEngine:
    """Scripted instruction writer for any DSPy signature; counts its calls in ``calls`` and keeps the rule set of
    every instruction it wrote in ``proposals`` (in order)."""

    def __init__(
        self,
        world: SimulatedWorld,
        *,
        seed: int = 0,
        p_helpful: float = 0.5,
        p_distractor: float = 0.3,
        base_instruction: str = BASE_INSTRUCTION,
    ) -> None:
        for name, p in {"p_helpful": p_helpful, "p_distractor": p_distractor}.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p!r}")
        self.world = world
        self.p_helpful = p_helpful
        self.p_distractor = p_distractor
        self.base_instruction = base_instruction
        self.calls = 0
        self.proposals: list[tuple[str, ...]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    # -- proposals ------------------------------------------------------------------------------------------------
    def draw_rules(self) -> list[str]:
        """A fresh random rule set: helpful rules with ``p_helpful``, distractors with ``p_distractor``, shuffled."""
        with self._lock:
            rules = [c.rule for c in self.world.concepts if self._rng.random() < self.p_helpful]
            rules += [d.rule for d in self.world.distractors if self._rng.random() < self.p_distractor]
            self._rng.shuffle(rules)
            self.proposals.append(tuple(rules))
        return rules

    def instruction(self) -> str:
        """A full instruction: the base task description followed by a fresh random rule set."""
        rules = self.draw_rules()
        if not rules:
            return self.base_instruction
        return self.base_instruction + "\nFollow these rules:\n" + "\n".join(f"- {rule}" for rule in rules)

    def rule_list(self) -> list[str]:
        """A fresh random rule set as a list; never empty (a harmless rule stands in for an empty draw)."""
        return self.draw_rules() or ["State the final number clearly."]

    # -- values by field ------------------------------------------------------------------------------------------
    def text_for(self, name: str) -> str:
        """Text for a ``str`` output: filler for descriptive fields, a new instruction for everything else."""
        lowered = name.lower()
        if "prefix" in lowered:
            return PREFIX_TEXT
        if lowered in {"reasoning", "rationale"} or "thought" in lowered:
            return NEUTRAL_REASONING
        if _NEUTRAL_NAME.search(lowered):
            return NEUTRAL_TEXT
        if "rules" in lowered:
            return "\n".join(f"{i}. {rule}" for i, rule in enumerate(self.rule_list(), 1))
        return self.instruction()

    def value_for(self, name: str, type_name: str, inputs: dict[str, str]) -> Any:
        """A value of the DSPy type ``type_name`` (as rendered in the system message) for output ``name``."""
        head, args = _generic(type_name)
        if head in {"Union", "Optional"}:
            options = [a for a in args if a not in {"NoneType", "None"}] or ["str"]
            return self.value_for(name, options[0], inputs)
        if head == "Literal":
            return ast.literal_eval("[" + ", ".join(args) + "]")[0] if args else ""
        if head in {"list", "List", "tuple", "set"}:
            item = args[0] if args else "str"
            if _generic(item)[0] == "str" and _RULE_LIST_NAME.search(name.lower()):
                return self.rule_list()
            return [self.value_for(name, item, inputs)]
        if head in {"dict", "Dict"}:
            value_type = args[1] if len(args) > 1 else "str"
            return {key: self.value_for(name, value_type, inputs) for key in self._dict_keys(inputs)}
        if head == "int":
            return 3
        if head == "float":
            return 0.5
        if head == "bool":
            return True
        return self.text_for(name)

    @staticmethod
    def _dict_keys(inputs: dict[str, str]) -> list[str]:
        """Keys for a dict output: the module names an input lists (SIMBA's ``module_names``), else one key."""
        for field_name, raw in inputs.items():
            if "name" not in field_name.lower():
                continue
            try:
                value = json.loads(raw)
            except ValueError:
                continue
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return value
        return ["advice"]

    # -- engine protocol ------------------------------------------------------------------------------------------
    def reply_text(self, request: Request) -> str:
        """The reply to ``request`` as text, formatted for the adapter that wrote it."""
        system, user = system_text(request), user_text(request)
        fields = parse_output_fields(system)
        if not fields:
            # A plain prompt (the gepa package's own reflection prompt): the instruction in a fenced block.
            return "Here is the improved instruction:\n```\n" + self.instruction() + "\n```"
        inputs = parse_input_values(user)
        values = {spec.name: self.value_for(spec.name, spec.type_name, inputs) for spec in fields}
        if is_json_mode(system, request):
            return json.dumps(values)
        parts = [f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}"
                 for name, value in values.items()]
        return "\n\n".join([*parts, "[[ ## completed ## ]]"])

    def complete(self, request: Request) -> Response:
        with self._lock:
            self.calls += 1
        text = self.reply_text(request)
        prompt_chars = len(system_text(request)) + len(user_text(request))
        return Response(
            id=None, model="simulated-proposer", message=Message.assistant([TextPart(text)]), finish_reason="stop",
            usage=Usage(input_tokens=max(1, prompt_chars // 4), output_tokens=max(1, len(text) // 4)),
        )

    def close(self) -> None:
        pass


def proposer_lm(world: SimulatedWorld, *, seed: int = 0, **engine_kwargs: Any) -> dspy.LM:
    """A ``dspy.LM`` (no response cache) backed by a fresh ``SimulatedProposerEngine`` for ``world``."""
    return dspy.LM("simulated/proposer", engine=SimulatedProposerEngine(world, seed=seed, **engine_kwargs),
                   cache=False)
