"""``python -m benchmarks``: one command line for every benchmark. It lists its commands without importing DSPy,
each command parses its options, the README's main command is one of them, and the package is laid out one way
(commands import the harness, never the reverse; no ``sys.path`` edits)."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import cli
from tests.helpers import REPO

BENCHMARKS = REPO / "benchmarks"


def test_help_lists_every_command_without_importing_dspy():
    check = textwrap.dedent("""
        import sys
        from benchmarks import cli
        try:
            cli.main(["--help"])
        except SystemExit:
            pass
        print("dspy imported:", "dspy" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name in cli.COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\b", done.stdout, flags=re.M), name
    assert "dspy imported: False" in done.stdout
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and all(name in run.stdout for name in cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_its_options_and_a_runner(name, capsys):
    module = cli.command_module(name)
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as stop:
        cli.parse_args([name, "--help"])
    assert stop.value.code == 0
    assert f"usage: python -m benchmarks {name}" in capsys.readouterr().out


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(["nonsense"])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_readme_main_command_is_the_run_command_with_its_defaults():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- main-command -->\s*```bash\n(.*?)\n```\s*<!-- /main-command -->", readme, flags=re.S)
    assert block, "README.md has no main-command block"
    install, command = (part.strip() for part in block.group(1).split("&&"))
    assert install == 'python -m pip install -e ".[local]"'
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "benchmarks"]
    args = cli.parse_args(words[3:])
    assert args.command == "run" and args.handler is cli.command_module("run")
    assert (args.task, args.student, args.teacher, args.optimizers) == ("reviews", "local", "local", None)
    assert args.command_line == command


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_the_harness_never_imports_a_command_and_nothing_edits_sys_path():
    sources = sorted(BENCHMARKS.rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text(encoding="utf-8")
        assert "sys.path" not in text, path
        if path.is_relative_to(BENCHMARKS / "harness"):
            wrong = [name for name in _imports(path) if name.startswith(("benchmarks.commands", "benchmarks.cli"))]
            assert not wrong, (path, wrong)
