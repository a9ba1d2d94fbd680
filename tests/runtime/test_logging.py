"""Logs that fit DSPy (issue 15): progress and decisions reach stderr at DSPy's default logging, as MIPROv2's and GEPA's
do, in DSPy's format, with nobody configuring logging; repeated warnings of one kind are one line with a count; no
line twice (also with ``verbose=True`` and ``logging.basicConfig``); no message cut mid-word; the no-valset split is
shown; ``dspy.disable_logging()`` silences this package too. And a result that prints short in a REPL and shows its
report in a notebook.

The logging tests run plain ``python`` scripts in a subprocess: what a user sees is what a script sees, not what
pytest's logging capture makes of it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from tests.helpers import REPO

LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) (\S+): (.*)$")

PRELUDE = """
import logging, sys
import dspy
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.testing import SimulatedWorld

def compile_world(world, *, valset=True, **kwargs):
    train, val = world.split(20, 20)
    dspy.configure(lm=world.student_lm())
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm(), num_threads=1, **kwargs)
    program = dspy.ChainOfThought("question -> answer: float")
    if valset:
        return optimizer.compile(program, trainset=train, valset=val)
    return optimizer.compile(program, trainset=train + val)
"""


def run_script(body: str) -> tuple[str, list[str]]:
    """Run ``body`` as a plain script (stderr not a terminal); its stdout and its stderr lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr.splitlines()


def messages(lines: list[str], level: str | None = None) -> list[str]:
    return [m.group(3) for line in lines if (m := LINE.match(line)) and level in (None, m.group(1))]


@pytest.fixture(scope="module")
def default_logging() -> tuple[str, list[str]]:
    """A script that configures no logging: a run without valset, a run whose teacher never parses, then the same
    after ``dspy.disable_logging()``."""
    return run_script("""
        compile_world(SimulatedWorld(), valset=False)
        print("--- never parses", file=sys.stderr)
        result = compile_world(SimulatedWorld(bad_teacher_calls=range(10_000))).distillation
        print(result.stopped)
        print("--- disabled", file=sys.stderr)
        dspy.disable_logging()
        compile_world(SimulatedWorld(bad_teacher_calls=range(10_000)))
    """)


def test_progress_and_decisions_reach_stderr_in_dspys_format_without_any_logging_setup(default_logging):
    _, lines = default_logging
    first = lines[: lines.index("--- never parses")]
    assert first and all(LINE.match(line) for line in first), first  # every line: time, level, logger, message
    shown = messages(first, "INFO")
    for expected in ("no valset given: split the trainset (seed=0) into 20 training and 20 validation examples",
                     "before the run: student", "round 1: student scores", "round 1: 3 of",
                     "concept distillation done"):
        assert any(line.startswith(expected) for line in shown), (expected, shown)
    assert len(first) == len(set(first))  # no line twice


def test_a_teacher_that_never_parses_is_a_few_whole_lines(default_logging):
    out, lines = default_logging
    part = lines[lines.index("--- never parses") + 1: lines.index("--- disabled")]
    assert all(LINE.match(line) for line in part), part  # no continuation line of a multi-line message
    warnings = messages(part, "WARNING")
    assert 1 <= len(warnings) <= 3, warnings
    folded = next(w for w in warnings if "did not parse" in w)
    assert "[10 times]" in folded  # 5 batches x 2 attempts, one line
    for line in messages(part):
        assert not re.search(r"output fie(?!lds)", line)  # the old cut: "Expected to find output fie"
        assert not re.search(r"\w\.\.\.$", line)  # never cut mid-word without a mark
    assert "\n" not in out.strip()  # result.stopped: one line as well


def test_dspy_disable_logging_silences_this_package_too(default_logging):
    _, lines = default_logging
    assert lines[lines.index("--- disabled") + 1:] == []


def test_verbose_with_logging_basicconfig_prints_each_line_once():
    _, lines = run_script("""
        logging.basicConfig(level=logging.INFO)
        compile_world(SimulatedWorld(), valset=False, verbose=True)
    """)
    shown = messages(lines)
    assert any(line.startswith("no valset given: split the trainset") for line in shown)
    assert any(line.startswith("concept distillation done") for line in shown)
    assert len(shown) == len(set(shown)), [m for m in shown if shown.count(m) > 1]
    bare = [line for line in lines if not LINE.match(line)]
    assert not [line for line in bare if "concept distillation done" in line]  # not through the root logger again


# -- in a REPL and in a notebook -------------------------------------------------------------------------------------
@pytest.fixture
def result(world):
    train, val = world.split(20, 20)
    dspy.configure(lm=world.student_lm())
    return ConceptDistillation(metric=world.metric, teacher_lm=world.teacher_lm()).compile(
        dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val).distillation


def test_the_result_prints_short(result):
    text = repr(result)
    assert len(text) < 400, len(text)
    assert text.startswith("DistillationResult(") and "0.400 -> 1.000" in text and "3 rules kept" in text
    assert f"{result.student_calls} student" in text


def test_the_result_shows_its_report_in_a_notebook(result):
    fragment = result._repr_html_()
    assert "<html" not in fragment and "<body" not in fragment  # a fragment for the notebook's page
    assert fragment.startswith('<div class="cd-report">')
    for rule in result.ruleset:
        assert rule.text in fragment
    styles = re.findall(r"<style>(.*?)</style>", fragment, flags=re.S)
    assert len(styles) == 1
    selectors = [s.strip() for block in styles[0].split("}") if "{" in block for s in block.split("{")[0].split(",")]
    assert selectors and all(s.startswith(".cd-report") for s in selectors), selectors  # no style leaks out


def test_any_message_of_the_package_prints_as_one_line(capsys):
    import logging

    logging.getLogger("dspy_concept_distill.anywhere").warning("a failure\n\nwith details\n  over lines")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and LINE.match(err[0]).group(3) == "a failure with details over lines"
