"""What identifies a compile's setup, so a checkpoint is reused only for the same one.

A ``Fingerprint`` hashes six parts: the program (its classes' code, each predictor's instructions, field types
and descriptions, demos, the adapter and DSPy's version), the student LMs, the data, the metric (its code, default
arguments and captured values), the teacher LM, and the settings that shape the run. Settings that only say how
far or how fast a run may go (budgets, threads) are left out, so a run stopped by its budget resumes under a larger
one. An LM is identified by its class, model, request settings and its engine's settings (public data attributes, to
a depth of three objects; call counters and functions set on the instance left out); an engine can say what
identifies it with an ``identity()`` method.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import dspy
import pydantic

from ..runtime.evaluator import example_key

RUN_CONTROLS = frozenset({"num_threads", "max_student_calls", "max_metric_calls", "max_teacher_calls", "max_tokens",
                          "max_cost_usd", "on_failure"})
_COUNTERS = frozenset({"calls", "call_count", "requests", "sampled_calls", "history"})
_MAX_ITEMS = 100  # items of a container that count toward an identity
_DEPTH = 2  # objects deep, for a metric's captured values
_ENGINE_DEPTH = 3  # objects deep, for an engine's settings (an engine may wrap another, which holds a config)


class Fingerprint(str):
    """The hash of a setup (the string itself), with the hash of each part in ``parts``."""

    parts: dict[str, str]

    def __new__(cls, parts: dict[str, str]) -> Fingerprint:
        made = super().__new__(cls, _hash(parts))
        made.parts = dict(parts)
        return made


def fingerprint(program: dspy.Module, base_instructions: dict[str, str], trainset: Sequence[dspy.Example],
                valset: Sequence[dspy.Example], metric: Callable[..., Any], teacher_lm: Any,
                params: dict[str, Any]) -> Fingerprint:
    default_lm = dspy.settings.lm
    predictors = program.named_predictors()
    payload = {
        "program": {
            "dspy": dspy.__version__,
            "adapter": _qualname(type(dspy.settings.adapter)) if dspy.settings.adapter is not None else None,
            "classes": sorted({_class_identity(type(m)) for _, m in program.named_sub_modules()}),  # type: ignore[arg-type]  # mypy: type[Any] is hashable
            "predictors": {name: {"instructions": base_instructions[name], "fields": _fields(p.signature),
                                  "demos": [_plain(d) for d in p.demos]} for name, p in predictors},
        },
        "student": {name: lm_identity(p.lm or default_lm) for name, p in predictors},
        "data": {"train": [example_key(e) for e in trainset], "val": [example_key(e) for e in valset]},
        "metric": code_identity(metric),
        "teacher": lm_identity(teacher_lm),
        "settings": {k: v for k, v in sorted(params.items()) if k not in RUN_CONTROLS
                     and isinstance(v, (int, float, str, bool, type(None)))},
    }
    return Fingerprint({part: _hash(value) for part, value in payload.items()})


def changed_parts(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """The parts whose hash differs (all of them when ``old`` has none)."""
    if not isinstance(old, dict):
        return sorted(new)
    return [part for part in sorted(new) if old.get(part) != new[part]]


# -- parts ------------------------------------------------------------------------------------------------------------
def _fields(signature: Any) -> list[dict[str, Any]]:
    out = []
    for kind, fields in (("in", signature.input_fields), ("out", signature.output_fields)):
        for name, info in fields.items():
            extra = info.json_schema_extra or {}
            out.append({"kind": kind, "name": name, "type": _type_identity(info.annotation),
                        "desc": str(extra.get("desc", "")), "prefix": str(extra.get("prefix", ""))})
    return out


def _type_identity(annotation: Any) -> Any:
    try:
        return {"name": str(annotation), "schema": pydantic.TypeAdapter(annotation).json_schema()}
    except Exception:  # a type pydantic cannot describe: its name stands for it
        return {"name": str(annotation)}


def lm_identity(lm: Any) -> dict[str, Any]:
    """What makes an LM's replies what they are: class, model, request settings and a custom engine's settings."""
    if lm is None:
        return {}
    identity: dict[str, Any] = {"class": _qualname(type(lm)), "model": getattr(lm, "model", None),
                                "kwargs": _settings(getattr(lm, "kwargs", None) or {}, 1)}
    engine = getattr(lm, "engine", None)
    if engine is not None and not isinstance(engine, str):
        identity["engine"] = _settings(engine, _ENGINE_DEPTH)
    return identity


def code_identity(fn: Any) -> str:
    """A hash of a callable: its code (source, else bytecode), default arguments and captured values; for a
    ``functools.partial`` its function and bound arguments; for a bound method or a callable object, also the
    object's settings."""
    return _hash(_callable(fn, _DEPTH))


def _callable(fn: Any, depth: int) -> Any:
    if isinstance(fn, functools.partial):
        return {"partial": _callable(fn.func, depth), "args": _settings(fn.args, depth),
                "kwargs": _settings(fn.keywords, depth)}
    if inspect.ismethod(fn):
        return {"method": _callable(fn.__func__, depth), "self": _settings(fn.__self__, depth - 1)}
    if isinstance(fn, (staticmethod, classmethod)):
        return _callable(fn.__func__, depth)
    if inspect.isfunction(fn):
        cells = [cell.cell_contents for cell in fn.__closure__ or () if _cell_filled(cell)]
        return {"code": _source(fn), "defaults": _settings(fn.__defaults__, depth),
                "kwdefaults": _settings(fn.__kwdefaults__, depth), "closure": _settings(cells, depth - 1)}
    return {"class": _class_identity(type(fn)),  # type: ignore[arg-type]  # mypy: type[Any] is hashable
            "settings": _settings(fn, depth - 1)}


def _cell_filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return _code_text(code) if code is not None else _qualname(fn)


def _code_text(code: Any) -> str:
    """Bytecode, names and constants of a code object, nested code objects included (never their addresses)."""
    consts = [_code_text(c) if inspect.iscode(c) else repr(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{code.co_names}|{consts}"


@functools.lru_cache(maxsize=512)
def _class_identity(cls: type) -> str:
    """A class by name, plus its methods (code, defaults, captured values) when it is not DSPy's own (DSPy's version
    covers those)."""
    name = _qualname(cls)
    if cls.__module__.split(".")[0] in {"dspy", "builtins"}:
        return name
    methods = {attr: _callable(member, 1) for attr, member in sorted(vars(cls).items())
               if inspect.isfunction(member) or isinstance(member, (staticmethod, classmethod))}
    bases = [_class_identity(base) for base in cls.__bases__ if base is not object]
    return f"{name}:{_hash([methods, bases])}"


# -- plain values -----------------------------------------------------------------------------------------------------
def _settings(value: Any, depth: int) -> Any:
    """A JSON-ready picture of ``value``: primitives as they are, containers item by item (the first
    ``_MAX_ITEMS``), LMs by ``lm_identity``, callables by their code, other objects by their public attributes (call
    counters left out) down to ``depth`` objects; below that, only the object's class."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (os.PathLike, enum.Enum)):
        return str(value)
    if depth < -2:  # containers nested in containers (or in themselves)
        return "..."
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))[:_MAX_ITEMS]
        return {str(k): _settings(v, depth - 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [len(value), *[_settings(v, depth - 1) for v in value[:_MAX_ITEMS]]]
    if isinstance(value, (set, frozenset)):
        return [len(value), *sorted((_settings(v, depth - 1) for v in value), key=repr)[:_MAX_ITEMS]]
    if isinstance(value, dspy.BaseLM):
        return lm_identity(value)
    if isinstance(value, type):  # by name: a class's code counts where it is the program's or the metric's own
        return _qualname(value)
    if depth <= 0:
        return {"class": _qualname(type(value))}
    identity = getattr(value, "identity", None)
    if callable(identity) and inspect.ismethod(identity):
        return {"class": _qualname(type(value)), "identity": _settings(identity(), 1)}
    if callable(value) and (inspect.isroutine(value) or isinstance(value, functools.partial)):
        return _callable(value, depth)
    return {"class": _qualname(type(value)), **{k: _settings(v, depth - 1) for k, v in _attributes(value)}}


def _attributes(obj: Any) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(obj):
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    else:
        try:
            items = sorted(vars(obj).items())
        except TypeError:
            return []
    # functions set on an instance are hooks (e.g. a test's patched ``complete``), not settings
    return [(k, v) for k, v in items if not k.startswith("_") and k not in _COUNTERS and not inspect.ismodule(v)
            and not inspect.isroutine(v)]


def _plain(value: Any) -> Any:
    if hasattr(value, "toDict"):
        return value.toDict()
    return value


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
