"""A scripted, blind proposer for every optimizer in the simulated worlds: NOT a real language model.

COPRO, InferRules, MIPROv2, GEPA and SIMBA need an LM that writes instructions (their ``prompt_model``,
``reflection_lm`` or teacher), and ConceptDistillation needs a teacher that answers ``InduceConcepts``.
``SimulatedProposerEngine`` plays all of these parts from one fixed pool of rules (``PoolRule``: helpful, harmful
and neutral ones): it answers any DSPy signature, in the adapter's format (ChatAdapter field markers or a
JSONAdapter object), and plain prompts (the instruction in a fenced block, as the standalone ``gepa`` package
expects).

Every output that is an instruction (a ``str`` field that is not a description, summary, reasoning or prefix; the
values of a ``dict[str, str]`` field; the items of a ``list[str]`` field named like rules; the rule objects of a
typed output such as ConceptDistillation's ``TeacherAnalysis``) gets a fresh draw: each pool rule is included
independently with probability ``p_helpful`` (helpful rules) or ``p_other`` (the others). The draw is seeded by
the proposer's seed, the request's text and how often that exact request was seen, so it is repeatable whatever
order parallel calls arrive in, and it never depends on which rules help: an optimizer reaches the best rule set
only by searching over proposals. A rule object names the predictor the rule acts in and claims one or two mistake
numbers at random. Other outputs get type-valid filler (numbers, booleans, lists, dicts, the first ``Literal``
option) that carries no rule phrase.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

import dspy

from dspy_concept_distill.testing import Prompt, ScriptedEngine, SimulatedWorld, format_reply

BASE_INSTRUCTION = "Solve the arithmetic word problem step by step and reply with the final number."
NEUTRAL_TEXT = "The examples are short arithmetic word problems about counts of items; each answer is one number."
NEUTRAL_REASONING = "Comparing the examples, the instruction should say how to treat the quantities in the question."
PREFIX_TEXT = "Answer:"
FILLER_RULE = "State the final number clearly."
DEFAULT_PREDICTORS = {"answer": "predict", "plan": "plan"}

_NEUTRAL_NAME = re.compile(
    r"reason|descri|summar|observ|discuss|prefix|rational|analys|thought|explan|feedback|diagnos")
_RULE_LIST_NAME = re.compile(r"rule|instruction|guideline|principle|advice|tip|propos")


@dataclass(frozen=True)
class PoolRule:
    """A rule the proposer can write: its ``text``, the ``phrase`` the simulated student recognizes, its ``kind``
    (``helpful``, ``harmful``, ``neutral``; ``generic``: a plausible, cheap generic rule that costs a little;
    ``tempting``: fixes a subgroup and breaks something else), the output ``field`` of the predictor it acts in,
    and its ``effect`` on the expected accuracy (or score) when added alone to the base prompt (documentation; the
    world decides)."""

    text: str
    phrase: str
    kind: str
    field: str = "answer"
    effect: float = 0.0


def world_pool(world: SimulatedWorld) -> list[PoolRule]:
    """The concept-specific world's rules as a pool: its concepts (helpful) and its distractors."""
    pool = [PoolRule(c.rule, c.phrase, "helpful", c.field) for c in world.concepts]
    return pool + [PoolRule(d.rule, d.phrase, d.kind, d.field) for d in world.distractors]


@dataclass
class _Call:
    """What one reply is drawn from: its generator, the request's input values and how many mistakes it shows."""

    rng: Random
    inputs: dict[str, str]
    n_items: int | None = None  # simulated questions shown (mistakes), when the request shows any

    @property
    def max_rules(self) -> int | None:
        """A limit on rules the request states in an input such as ``max_rules``."""
        for name, raw in self.inputs.items():
            found = re.match(r"\s*(\d+)", raw)
            if "max" in name.lower() and "rule" in name.lower() and found:
                return int(found.group(1))
        return None


def _generic(type_name: str) -> tuple[str, list[str]]:
    """``"list[dict[str, Any]]"`` -> ``("list", ["dict[str, Any]"])``; ``"int"`` -> ``("int", [])``."""
    if "[" in type_name and type_name.endswith("]"):
        head, inner = type_name.split("[", 1)
        return head.strip(), split_type_args(inner[:-1])
    return type_name.strip(), []


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


class SimulatedProposerEngine(ScriptedEngine):
    """Scripted instruction and rule writer for any DSPy signature (not a real model); counts its calls in
    ``calls`` and keeps the rules of every draw in ``proposals`` (in the order drawn)."""

    model = "simulated-proposer"

    def __init__(
        self,
        pool: Sequence[PoolRule],
        *,
        seed: int = 0,
        p_helpful: float = 0.4,
        p_other: float = 0.4,
        predictor_names: Mapping[str, str] | None = None,
        base_instruction: str = BASE_INSTRUCTION,
    ) -> None:
        super().__init__()
        for name, p in {"p_helpful": p_helpful, "p_other": p_other}.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p!r}")
        self.pool = list(pool)
        self.seed = seed
        self.p_helpful = p_helpful
        self.p_other = p_other
        self.predictor_names = dict(DEFAULT_PREDICTORS if predictor_names is None else predictor_names)
        self.base_instruction = base_instruction
        self.proposals: list[tuple[str, ...]] = []
        self._seen: Counter[str] = Counter()

    # -- draws ----------------------------------------------------------------------------------------------------
    def rng_for(self, key: str) -> Random:
        """A generator for one request: seeded by the proposer's seed, ``key`` and how often ``key`` came before."""
        with self._lock:
            count = self._seen[key]
            self._seen[key] += 1
        digest = hashlib.sha256(f"{self.seed}|{key}|{count}".encode()).hexdigest()
        return Random(int(digest[:16], 16))

    def draw(self, rng: Random) -> list[PoolRule]:
        """A fresh random rule set, shuffled: each pool rule with its kind's probability."""
        rules = [r for r in self.pool if rng.random() < (self.p_helpful if r.kind == "helpful" else self.p_other)]
        rng.shuffle(rules)
        with self._lock:
            self.proposals.append(tuple(r.text for r in rules))
        return rules

    def draw_rules(self, key: str = "") -> list[str]:
        """The texts of a fresh draw for ``key`` (for callers without a request)."""
        return [r.text for r in self.draw(self.rng_for(key))]

    def instruction(self, rng: Random) -> str:
        """A full instruction: the base task description followed by a fresh random rule set."""
        rules = self.draw(rng)
        if not rules:
            return self.base_instruction
        return self.base_instruction + "\nFollow these rules:\n" + "\n".join(f"- {r.text}" for r in rules)

    def rule_list(self, rng: Random) -> list[str]:
        """A fresh random rule set as a list; never empty (a harmless filler stands in for an empty draw)."""
        return [r.text for r in self.draw(rng)] or [FILLER_RULE]

    def text_for(self, name: str, rng: Random) -> str:
        """Text for a ``str`` output: filler for descriptive fields, a new instruction for everything else."""
        lowered = name.lower()
        if "prefix" in lowered:
            return PREFIX_TEXT
        if lowered in {"reasoning", "rationale"} or "thought" in lowered:
            return NEUTRAL_REASONING
        if _NEUTRAL_NAME.search(lowered):
            return NEUTRAL_TEXT
        if "rules" in lowered:
            return "\n".join(f"{i}. {rule}" for i, rule in enumerate(self.rule_list(rng), 1))
        return self.instruction(rng)

    # -- values by DSPy type name (fields without a JSON schema: str, numbers, bools, Literal) --------------------
    def value_for(self, name: str, type_name: str, call: _Call) -> Any:
        """A value of the DSPy type ``type_name`` (as rendered in the system message) for output ``name``."""
        head, args = _generic(type_name)
        if head in {"Union", "Optional"}:
            options = [a for a in args if a not in {"NoneType", "None"}] or ["str"]
            return self.value_for(name, options[0], call)
        if head == "Literal":
            return ast.literal_eval("[" + ", ".join(args) + "]")[0] if args else ""
        if head in {"list", "List", "tuple", "set"}:
            item = args[0] if args else "str"
            if _generic(item)[0] == "str" and _RULE_LIST_NAME.search(name.lower()):
                return self.rule_list(call.rng)
            return [self.value_for(name, item, call)]
        if head in {"dict", "Dict"}:
            value_type = args[1] if len(args) > 1 else "str"
            return {key: self.value_for(name, value_type, call) for key in _dict_keys(call.inputs)}
        if head in _SCALARS:
            return _SCALARS[head]
        return self.text_for(name, call.rng)

    # -- values from a JSON schema (lists, dicts, pydantic models) ------------------------------------------------
    def from_schema(self, name: str, schema: dict[str, Any], defs: dict[str, Any], call: _Call) -> Any:
        """A value that validates against ``schema``; an array of rule objects gets one object per drawn rule."""
        schema = _resolve(schema, defs)
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s.get("type") != "null"] or [{"type": "string"}]
            return self.from_schema(name, options[0], defs, call)
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type")
        if kind == "object":
            props = schema.get("properties")
            if props is None:  # dict[str, X]: keyed by the module names the request lists
                values = schema.get("additionalProperties") or {"type": "string"}
                return {key: self.from_schema(name, values, defs, call) for key in _dict_keys(call.inputs)}
            return {key: self.from_schema(key, sub, defs, call) for key, sub in props.items()}
        if kind == "array":
            return self._array(name, schema, defs, call)
        if kind in _SCHEMA_SCALARS:
            return _SCHEMA_SCALARS[kind]
        return self.text_for(name, call.rng)

    def _array(self, name: str, schema: dict[str, Any], defs: dict[str, Any], call: _Call) -> list:
        items = _resolve(schema.get("items", {"type": "string"}), defs)
        cap = schema.get("maxItems")
        props = items.get("properties", {})
        if items.get("type") == "object" and "rule" in props:
            values = [self._rule_object(rule, props, defs, call) for rule in self.draw(call.rng)]
            values = values[: call.max_rules] if call.max_rules is not None else values
        elif items.get("type") == "string" and _RULE_LIST_NAME.search(name.lower()):
            values = self.rule_list(call.rng)
        elif items.get("type") == "integer":  # mistake numbers a rule claims: one or two, at random
            n = call.n_items or cap or 1
            values = sorted(call.rng.sample(range(1, n + 1), min(n, call.rng.randint(1, 2))))
        else:
            values = [self.from_schema(name, items, defs, call)]
        return values[:cap] if cap is not None else values

    def _rule_object(self, rule: PoolRule, props: dict[str, Any], defs: dict[str, Any], call: _Call) -> dict:
        value = {key: self.from_schema(key, sub, defs, call) for key, sub in props.items()
                 if key not in {"rule", "predictor"}}
        value["rule"] = rule.text
        if "predictor" in props:
            value["predictor"] = self.predictor_names.get(rule.field, rule.field)
        return value

    # -- engine protocol ------------------------------------------------------------------------------------------
    def reply(self, prompt: Prompt, index: int) -> str:
        rng = self.rng_for(prompt.context + "\n" + prompt.user)
        outputs = prompt.outputs()
        if not outputs:
            # A plain prompt (the gepa package's own reflection prompt): the instruction in a fenced block.
            return "Here is the improved instruction:\n```\n" + self.instruction(rng) + "\n```"
        call = _Call(rng, prompt.inputs(*prompt.input_names()), len(set(_QID.findall(prompt.user))) or None)
        values = {}
        for spec in outputs:
            if spec.schema and ("$ref" in spec.schema or spec.schema.get("type") in {"object", "array"}):
                values[spec.name] = self.from_schema(spec.name, spec.schema, spec.schema.get("$defs", {}), call)
            else:
                values[spec.name] = self.value_for(spec.name, spec.type_name, call)
        return format_reply(values, json_mode=prompt.json_mode)


_SCALARS: dict[str, Any] = {"int": 3, "float": 0.5, "bool": True}
_SCHEMA_SCALARS: dict[str, Any] = {"integer": 1, "number": 0.5, "boolean": True}
_QID = re.compile(r"\bQ\d+\b")


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    return defs.get(schema["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in schema else schema


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


class MisplacingProposerEngine(SimulatedProposerEngine):
    """The blind proposer, except that each rule object names a predictor drawn at random from
    ``predictor_names`` (uniformly, from the reply's seeded generator) instead of the one the rule acts in: half
    the time, on a two-predictor program, a rule lands where it does nothing."""

    model = "simulated-misplacing-proposer"

    def _rule_object(self, rule: PoolRule, props: dict[str, Any], defs: dict[str, Any], call: _Call) -> dict:
        value = super()._rule_object(rule, props, defs, call)
        if "predictor" in props:
            value["predictor"] = call.rng.choice(sorted(set(self.predictor_names.values())))
        return value


PLACEMENTS = {"own": SimulatedProposerEngine, "random": MisplacingProposerEngine}


def proposer_lm(pool: Sequence[PoolRule], *, seed: int = 0, placement: str = "own", **engine_kwargs: Any) -> dspy.LM:
    """A ``dspy.LM`` (no response cache) backed by a fresh ``SimulatedProposerEngine`` over ``pool``
    (``placement="random"``: a ``MisplacingProposerEngine``)."""
    return dspy.LM("simulated/proposer", engine=PLACEMENTS[placement](pool, seed=seed, **engine_kwargs), cache=False)
