"""Scripted LM engines for deterministic tests and simulated benchmarks: NOT real language models.

``ScriptedEngine`` is the base of every scripted engine (``dspy_concept_distill.testing`` and the benchmarks'
simulated proposer and students): it counts calls, reads each request as a ``Prompt`` and returns the reply text a
subclass writes. Like ``dspy.utils.DummyLM``, replies are written by DSPy's own adapters (``format_reply`` uses
``format_field_with_value``) in the format the request asks for (ChatAdapter field markers or a JSONAdapter
object), and input values are read back with ``ChatAdapter.parse``. What an engine reads from a prompt is what any
LM reads: the instructions, the input values, the output fields it is asked for and their JSON schema.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.adapters.chat_adapter import FieldInfoWithName, field_header_pattern
from dspy.lm15 import Message, Response, TextPart, Usage

_FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \((.+?)\)", flags=re.M)
_SCHEMA_NOTE = "must adhere to the JSON schema: "


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


class SharedEngineState:
    """What makes an engine copy and pickle as a model handle should: a deep copy is the engine itself (copies of a
    program keep calling, and counting on, the same model, as copies of a client reach the same server), and pickling
    leaves out the locks named in ``_locks`` and makes new ones on load, so optimizers and programs that hold a
    scripted LM can be deep-copied without DSPy's "Failed to deep copy attribute 'lm'" warning, and pickled."""

    _locks: tuple[str, ...] = ("_lock",)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedEngineState:
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._locks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in self._locks:
            setattr(self, name, threading.Lock())


class ScriptedEngine(SharedEngineState):
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
