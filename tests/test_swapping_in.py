"""Swapping ConceptDistillation in for COPRO, MIPROv2, GEPA, SIMBA or InferRules is one line: every parameter name of
theirs, given to the constructor or to ``compile``, is ours, read as ours (one warning line), ignored where it cannot
matter, or refused with an error that names what to use here. The names are walked from the installed DSPy's
signatures, so a DSPy release that adds one fails here until the table in ``foreign.py`` says what it becomes."""

from __future__ import annotations

import inspect
import logging

import dspy
import pytest
from dspy.teleprompt import COPRO, GEPA, SIMBA, BootstrapFewShot, InferRules, MIPROv2

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.foreign import FOREIGN_PARAMETERS, IGNORE, MAP, REFUSE, markdown_table
from tests.helpers import REPO

OPTIMIZERS = {"COPRO": COPRO, "MIPROv2": MIPROv2, "GEPA": GEPA, "SIMBA": SIMBA, "InferRules": InferRules}
# InferRules(**kwargs) hands them to BootstrapFewShot; COPRO(**_kwargs) swallows them (nothing to walk).
KWARGS_GO_TO = {("InferRules", "__init__"): BootstrapFewShot.__init__}
OURS = {"__init__": set(inspect.signature(ConceptDistillation.__init__).parameters) - {"self", "kwargs"},
        "compile": {"student", "trainset", "teacher", "valset"}}
DOCS = REPO / "docs" / "swapping-in.md"


def their_parameters(method: str) -> list[tuple[str, str, object]]:
    """(optimizer, parameter, default) for every named parameter of ``method`` of the five optimizers."""
    found = []
    for optimizer, cls in OPTIMIZERS.items():
        functions = [getattr(cls, method)]
        for function in functions:
            for p in inspect.signature(function).parameters.values():
                if p.kind is p.VAR_KEYWORD and (optimizer, method) in KWARGS_GO_TO:
                    functions.append(KWARGS_GO_TO[(optimizer, method)])
                elif p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    found.append((optimizer, p.name, p.default))
    return found


def foreign(method: str) -> list[tuple[str, str, object]]:
    return [(o, n, d) for o, n, d in their_parameters(method) if n not in OURS[method]]


def test_every_parameter_of_the_five_optimizers_is_ours_or_in_the_table():
    for method in ("__init__", "compile"):
        params = their_parameters(method)
        assert {o for o, _, _ in params} == set(OPTIMIZERS)
        unhandled = sorted({f"{o}.{method}({n}=)" for o, n, _ in params if n not in OURS[method]}
                           - {f"{o}.{method}({n}=)" for o, n, _ in params if n in FOREIGN_PARAMETERS})
        assert unhandled == []
    assert len(their_parameters("__init__")) > 60 and len(their_parameters("compile")) > 20  # the walk walked


@pytest.fixture
def lms(world):
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)
    return student, teacher


def samples(name: str, default: object, teacher: dspy.LM) -> list[object]:
    """Values to try: their default, and a value that asks for something (for names whose default is None)."""
    asking = {"prompt_model": teacher, "reflection_lm": teacher, "teacher_settings": {"lm": teacher},
              "task_model": teacher, "num_candidates": 7, "max_full_evals": 3, "instruction_proposer": object(),
              "code_proposer": object(), "gepa_kwargs": {"x": 1}, "max_errors": 5, "wandb_api_key": "key",
              "wandb_init_kwargs": {"project": "p"}, "num_trials": 12, "max_bootstrapped_demos": 2,
              "max_labeled_demos": 2, "seed": 3, "requires_permission_to_run": False, "provide_traceback": True,
              "eval_kwargs": {"num_threads": 2, "display_progress": True}, "failure_score": -1.0,
              "perfect_score": 10.0, "use_wandb": True, "use_mlflow": True}
    values = [] if default is inspect.Parameter.empty else [default]
    if name in asking:
        values.append(asking[name])
    return values or [None]


def asks(name: str, value: object) -> bool:
    entry = FOREIGN_PARAMETERS[name]
    return value is not None and not any(type(value) is type(s) and value == s for s in entry.same_here)


def check_outcome(name: str, value: object, call, caplog) -> object | None:
    """Call with ``name=value``; the outcome is what the table promises, never a bare TypeError."""
    entry = FOREIGN_PARAMETERS[name]
    caplog.clear()
    if entry.action is REFUSE and asks(name, value):
        with pytest.raises(TypeError, match=rf"'{name}': use {entry.here}"):
            call()
        return None
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill"):
        out = call()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dspy_concept_distill.foreign"]
    if entry.action is IGNORE or not asks(name, value):
        assert warnings == [], (name, value)
    else:
        assert len(warnings) == 1 and f"{name}=" in warnings[0], (name, value, warnings)
    return out


@pytest.mark.parametrize(("optimizer", "name", "default"), foreign("__init__"),
                         ids=[f"{o}-{n}" for o, n, _ in foreign("__init__")])
def test_each_constructor_parameter_of_theirs_is_mapped_ignored_or_refused(lms, world, caplog, optimizer, name,
                                                                           default):
    teacher = lms[1]
    entry = FOREIGN_PARAMETERS[name]
    for value in samples(name, default, teacher):
        ours = {} if entry.here == "teacher_lm" and value is not None else {"teacher_lm": teacher}
        given = {**ours, name: value}
        made = check_outcome(name, value, lambda g=given: ConceptDistillation(metric=world.metric, **g), caplog)
        if made is not None and entry.action is MAP and asks(name, value):
            expected = value["lm"] if name == "teacher_settings" else value
            assert getattr(made, entry.here) is expected


@pytest.mark.parametrize(("optimizer", "name", "default"), foreign("compile"),
                         ids=[f"{o}-{n}" for o, n, _ in foreign("compile")])
def test_each_compile_argument_of_theirs_is_mapped_ignored_or_refused(lms, world, caplog, optimizer, name, default):
    train, val = world.split(8, 6)
    optimizer_ = ConceptDistillation(metric=world.metric, teacher_lm=lms[1])
    for value in samples(name, default, lms[1]):
        optimized = check_outcome(name, value, lambda v=value: optimizer_.compile(
            dspy.Predict("question -> answer: float"), trainset=train, valset=val, **{name: v}), caplog)
        assert optimized is None or optimized.distillation is not None
    assert optimizer_.seed == 0 and optimizer_.num_threads is None  # compile's arguments change only that compile


def test_the_table_holds_only_their_names_and_each_entry_says_what_to_use(lms):
    theirs = {n for method in ("__init__", "compile") for _, n, _ in foreign(method)}
    assert set(FOREIGN_PARAMETERS) == theirs  # nothing stale
    for name, entry in FOREIGN_PARAMETERS.items():
        assert entry.here, name
        assert entry.action is MAP or entry.why, name
        if entry.action is MAP and entry.convert is None:
            assert entry.here in OURS["__init__"], name


def test_the_docs_show_the_table():
    assert markdown_table(OURS["__init__"]) in DOCS.read_text()


# -- the swap, line by line -------------------------------------------------------------------------------------------
def test_a_missing_teacher_lm_names_it_and_what_else_is_read_as_it(lms, world):
    for kwargs in ({}, {"teacher_lm": None}):
        with pytest.raises(ValueError, match=r"needs a teacher_lm.*prompt_model=, reflection_lm=.*dspy\.settings\.lm"):
            ConceptDistillation(metric=world.metric, **kwargs)  # no fallback to the configured (student) LM


@pytest.mark.parametrize("name", ["prompt_model", "reflection_lm", "teacher_settings"])
def test_their_name_for_the_strong_lm_is_the_teacher(lms, world, caplog, name):
    teacher = lms[1]
    train, val = world.split(20, 20)
    value = {"lm": teacher} if name == "teacher_settings" else teacher
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill.foreign"):
        optimizer = ConceptDistillation(metric=world.metric, **{name: value})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"ConceptDistillation(): read other optimizers' parameters as "
                                                   f"ours: {name}=")
    assert "as teacher_lm=LM('simulated/teacher')" in caplog.records[0].getMessage()
    result = optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=train,
                               valset=val).distillation
    assert teacher.engine.calls > 0 and len(result.accepted_rules) == 3


def test_copro_breadth_and_depth_are_teacher_calls_and_rounds(lms, world):
    optimizer = ConceptDistillation(prompt_model=lms[1], metric=world.metric, breadth=4, depth=2)
    assert (optimizer.teacher_lm, optimizer.num_batches, optimizer.rounds) == (lms[1], 4, 2)


def test_a_mapped_name_may_not_contradict_ours(lms, world):
    other = world.teacher_lm()
    with pytest.raises(TypeError, match="reflection_lm= is read as teacher_lm=, which is given as well"):
        ConceptDistillation(metric=world.metric, teacher_lm=lms[1], reflection_lm=other)
    with pytest.raises(TypeError, match="two parameters give teacher_lm"):
        ConceptDistillation(metric=world.metric, prompt_model=lms[1], reflection_lm=other)
    with pytest.raises(TypeError, match=r"teacher_settings: \['temperature'\] have no equivalent"):
        ConceptDistillation(metric=world.metric, teacher_settings={"lm": other, "temperature": 0.7})


def test_a_mipro_compile_call_runs_as_is(lms, world, caplog):
    train, val = world.split(20, 20)
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=lms[1])
    plain = optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val)
    caplog.clear()  # the plain compile's INFO lines, captured when the package logs at INFO (as run alone)
    with caplog.at_level(logging.WARNING, logger="dspy_concept_distill.foreign"):
        swapped = optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=train, valset=val,
                                    max_bootstrapped_demos=2, max_labeled_demos=2, requires_permission_to_run=False,
                                    num_trials=20, minibatch=True)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("compile(): ignored other optimizers' parameters")
    for name in ("max_bootstrapped_demos=2", "max_labeled_demos=2", "num_trials=20", "minibatch=True"):
        assert name in lines[0]
    assert "requires_permission_to_run" not in lines[0]
    assert swapped.distillation.ruleset == plain.distillation.ruleset


def test_simbas_compile_seed_is_the_seed_of_that_compile(lms, world):
    train = world.split(20, 0)[0]
    program = dspy.ChainOfThought("question -> answer: float")
    optimizer = ConceptDistillation(metric=world.metric, teacher_lm=lms[1])
    by_compile = optimizer.compile(program, trainset=train, seed=3)  # no valset: the split follows the seed
    by_constructor = ConceptDistillation(metric=world.metric, teacher_lm=lms[1], seed=3).compile(program,
                                                                                                  trainset=train)
    assert optimizer.seed == 0
    assert by_compile.distillation.to_dict()["mistakes"] == by_constructor.distillation.to_dict()["mistakes"]
    assert by_compile.distillation.ruleset == by_constructor.distillation.ruleset


def test_compile_names_our_own_settings_as_the_constructors(lms, world):
    train, val = world.split(8, 6)
    with pytest.raises(TypeError, match=r"'num_threads': a setting of the optimizer, give it to "
                                        r"ConceptDistillation\(num_threads=\.\.\.\)"):
        ConceptDistillation(metric=world.metric, teacher_lm=lms[1]).compile(
            dspy.Predict("question -> answer"), trainset=train, valset=val, num_threads=4)
