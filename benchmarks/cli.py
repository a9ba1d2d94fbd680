"""``python -m benchmarks <command> [options]``: one argparse subcommand per module of ``benchmarks/commands``.

Each command module has ``add_arguments(parser)``, ``run(args) -> int`` (the exit code) and, when options depend
on each other, ``check(args) -> str | None`` (a usage error, reported as argparse reports its own). Only the module
of the command asked for is imported (``--help`` lists the commands without importing DSPy), and the command line
as typed is recorded in ``args.command_line`` for the results to quote.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence
from types import ModuleType

PROG = "python -m benchmarks"
DESCRIPTION = ("The benchmarks of dspy_concept_distill, one subcommand each (what they measured: "
               "benchmarks/README.md). Run from the repository root.")

# name -> (module under benchmarks.commands, one line for the command list)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "Concept Distillation end to end on a task (the main job), or optimizers compared on held-out "
                   "test data (--optimizers)"),
    "compare": ("compare", "student calls of DSPy's optimizers and Concept Distillation on the simulated task"),
    "family": ("family", "every optimizer on the simulated task family, judged by oracle accuracy"),
    "noise": ("noise", "light and medium presets against a noisy simulated student"),
    "speed": ("speed", "the optimizer's own overhead per LM call and its parallel efficiency (scripted LMs)"),
    "speculation": ("speculation", "student requests racing ahead adds over a 1-thread run, and same decisions"),
    "parse-failures": ("parse_failures", "parse failures of SmolLM2-135M with and without constrained decoding"),
    "router": ("router", "throughput of one llama.cpp server vs a LiteLLM Router over two"),
    "plot": ("plot", "redraw the PNG plot of a real-task comparison from its CSV"),
}


def command_module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.commands.{COMMANDS[name][0]}")


def build_parser(selected: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, with the options of command ``selected`` (None: the command list only)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                     epilog="python -m benchmarks <command> --help: that command's options")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    by_name = {}
    for name, (_, summary) in COMMANDS.items():
        if name == selected:
            module = command_module(name)
            sub = subparsers.add_parser(name, help=summary, description=module.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(sub)
            sub.set_defaults(handler=module)
        else:
            sub = subparsers.add_parser(name, help=summary)
        by_name[name] = sub
    return parser, by_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of ``argv`` (default: this process's), checked; ``args.handler`` is the command's module."""
    words = list(sys.argv[1:] if argv is None else argv)
    selected = words[0] if words and words[0] in COMMANDS else None
    parser, subparsers = build_parser(selected)
    args = parser.parse_args(words)
    check = getattr(args.handler, "check", None)
    problem = check(args) if check else None
    if problem:
        subparsers[args.command].error(problem)
    args.command_line = shlex.join(["python", "-m", "benchmarks", *words])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return int(args.handler.run(args))
