"""The package's import structure: layers that import only downwards, and no import circle.

From the ground up: the records every phase shares (``rules``, ``records``, ``text``) and the exceptions
(``errors``); ``runtime`` (evaluator, executor, metering, ledger, pricing, forecast, metric, progress);
``persistence`` (journal, fingerprint); the
``phases`` and ``reporting`` (side by side, neither imports the other); the run (``settings``, ``state``,
``finish``); the public face (``optimizer``, ``tracking``, ``__init__``). ``lms`` and ``testing`` stand apart: they
import nothing of the package outside themselves. Every import counts, also one inside a function or under
``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dspy_concept_distill

PACKAGE = Path(dspy_concept_distill.__file__).parent
NAME = "dspy_concept_distill"
LAYERS = {
    "rules": 0, "records": 0, "text": 0, "errors": 0,
    "runtime": 1,
    "persistence": 2,
    "phases": 3, "reporting": 3,
    "settings": 4, "state": 4, "finish": 4, "foreign": 4,
    "optimizer": 5, "tracking": 5, "__init__": 5,
}
APART = {"lms", "testing"}  # import nothing of the package outside themselves


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports (a ``from X import name`` of a submodule counts as it)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == NAME}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != NAME:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _is_module(sub) else base)
    return found


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def part(module: str) -> str:
    """The top-level part of the package a module belongs to (``runtime``, ``rules``, ``__init__``...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_package_has_a_layer():
    assert {part(m) for m in graph()} <= set(LAYERS) | APART


def test_imports_run_down_the_layers_never_up():
    upward = [(src, dst) for src, targets in graph().items() for dst in targets
              if part(src) not in APART and part(dst) not in APART and LAYERS[part(dst)] > LAYERS[part(src)]]
    assert upward == []


def test_sibling_layers_do_not_import_each_other():
    across = [(src, dst) for src, targets in graph().items() for dst in targets
              if part(src) != part(dst) and part(src) in LAYERS and part(dst) in LAYERS
              and LAYERS[part(src)] == LAYERS[part(dst)] and part(src) in {"phases", "reporting"}]
    assert across == []


@pytest.mark.parametrize("apart", sorted(APART))
def test_lms_and_testing_import_nothing_of_the_package_outside_themselves(apart):
    outside = [(src, dst) for src, targets in graph().items() for dst in targets
               if part(src) == apart and part(dst) != apart]
    assert outside == []


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert circles == []
