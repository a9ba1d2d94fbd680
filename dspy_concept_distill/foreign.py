"""Other optimizers' parameters: the one table that says, for every parameter name of COPRO, MIPROv2, GEPA, SIMBA
and InferRules (constructor and ``compile``), what ``ConceptDistillation`` does with it, so swapping one in is one
line. A name is

- ``MAP``: read as our parameter (``target``), with one warning line per call naming the translation;
- ``IGNORE``: accepted silently, as it cannot change what this optimizer does (a display option, a stats switch, a
  behaviour that is always on here);
- ``WARN``: accepted and ignored, with one warning line per call: a setting of the other algorithm with nothing to
  act on here (demos, minibatches, merge steps, sampling temperatures);
- ``REFUSE``: a ``TypeError`` that names what to use here, because running without it would quietly do something
  else than asked (another student LM, a custom proposer, a budget in other units).

A value of ``None`` always means "not set" and is accepted silently, as are the values in ``same_here`` (what
happens here anyway, e.g. ``max_bootstrapped_demos=0``). Parameters with the same name and meaning (``metric``,
``auto``, ``num_threads``, ``seed``, ``max_metric_calls``, ``metric_threshold``, ``log_dir``, ``verbose``, and
``compile``'s ``trainset``/``valset``/``teacher``) are ours already and are not in the table.
tests/test_swapping_in.py walks the signatures of the installed DSPy, so a name a new release adds fails a test.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)


class Action(StrEnum):
    MAP = "mapped"
    IGNORE = "ignored"
    WARN = "ignored with a warning"
    REFUSE = "refused"


MAP, IGNORE, WARN, REFUSE = Action.MAP, Action.IGNORE, Action.WARN, Action.REFUSE


@dataclass(frozen=True)
class Foreign:
    """What one of the other optimizers' parameters becomes here."""

    action: Action
    here: str  # what to use here (MAP: our parameter's name), as the docs table and the messages say it
    why: str = ""  # for WARN and IGNORE: why it has no effect; for REFUSE: what to do instead
    same_here: tuple[Any, ...] = ()  # values accepted silently: what happens here anyway
    convert: Callable[[Any], dict[str, Any]] | None = None  # MAP with a value that is not taken as it is


def _teacher_settings(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or "lm" not in value:
        raise TypeError("teacher_settings: only dict(lm=...) has an equivalent here, teacher_lm=...; "
                        f"got {value!r}")
    other = sorted(set(value) - {"lm"})
    if other:
        raise TypeError(f"teacher_settings: {other} have no equivalent here; configure the teacher LM itself "
                        "(e.g. dspy.LM(..., temperature=...)) and pass it as teacher_lm=")
    return {"teacher_lm": value["lm"]}


_DISPLAY = {"display_progress", "display_table", "provide_traceback"}


def _eval_kwargs(value: Any) -> dict[str, Any]:
    """COPRO's ``eval_kwargs`` (keyword arguments of ``dspy.Evaluate``): ``num_threads`` is ours; display options
    cannot matter; anything else is warned about as ignored."""
    if not isinstance(value, Mapping):
        raise TypeError(f"eval_kwargs must be a dict of dspy.Evaluate arguments, got {type(value).__name__}")
    ignored = sorted(set(value) - _DISPLAY - {"num_threads"})
    if ignored:
        logger.warning("eval_kwargs %s ignored: each run is scored by the metric as dspy.Evaluate does, a failed "
                       "run scores 0.0, and program errors are mistakes for the teacher", ignored)
    return {"num_threads": value["num_threads"]} if value.get("num_threads") is not None else {}


_TEACHER = "teacher_lm"
_NO_DEMOS = "Concept Distillation writes rules, not demos (run BootstrapFewShot on the optimized program for demos)"
_BUDGET = "the search size follows auto= or the budgets max_metric_calls= / max_student_calls="
_MIPRO_SEARCH = "a setting of MIPROv2's Bayesian search; rules are raced on the valset here, stopping early"

FOREIGN_PARAMETERS: dict[str, Foreign] = {
    # the strong LM that writes the instructions
    "prompt_model": Foreign(MAP, _TEACHER, "the strong LM that writes the rules"),  # COPRO, MIPROv2, SIMBA
    "reflection_lm": Foreign(MAP, _TEACHER, "the strong LM that writes the rules"),  # GEPA
    "teacher_settings": Foreign(MAP, _TEACHER, "its lm: dict(lm=strong); other keys are refused",
                                convert=_teacher_settings),  # MIPROv2, SIMBA, InferRules
    "task_model": Foreign(REFUSE, "the program's own LM",
                          "the student is the LM the program already uses: dspy.configure(lm=...) or "
                          "program.set_lm(...)"),
    # the size of the search
    "num_candidates": Foreign(MAP, "max_candidates", "candidates per step: candidate rules raced per round"),
    "breadth": Foreign(MAP, "num_batches", "new prompts per step: teacher calls per round"),  # COPRO
    "depth": Foreign(MAP, "rounds", "steps of the search: rounds of mistakes, rules and races"),  # COPRO
    "max_steps": Foreign(MAP, "rounds", "steps of the search: rounds of mistakes, rules and races"),  # SIMBA
    "num_rules": Foreign(MAP, "max_rules_per_batch", "rules the teacher may write per call"),  # InferRules
    "reflection_minibatch_size": Foreign(MAP, "mistakes_per_batch", "examples the teacher reads per call"),  # GEPA
    "perfect_score": Foreign(MAP, "metric_threshold", "a training example scoring below it is a mistake",
                             same_here=(1.0, 1)),  # GEPA
    "max_full_evals": Foreign(REFUSE, "max_metric_calls",
                              "give the budget in program runs: max_metric_calls = full evaluations x (trainset + "
                              "valset size), or a preset with auto="),
    "num_trials": Foreign(WARN, "auto or max_metric_calls", _BUDGET),  # MIPROv2 compile
    "bsize": Foreign(WARN, "mistakes_per_batch", "SIMBA's minibatch; the teacher reads mistakes_per_batch mistakes "
                     "per call and rules are raced on the valset (half of a valset of 60 or more; the other half "
                     "checks the returned rules)"),
    # demos
    "max_bootstrapped_demos": Foreign(WARN, "nothing", _NO_DEMOS, same_here=(0,)),
    "max_labeled_demos": Foreign(WARN, "nothing", _NO_DEMOS, same_here=(0,)),
    "max_demos": Foreign(WARN, "nothing", _NO_DEMOS, same_here=(0,)),  # SIMBA
    "max_rounds": Foreign(WARN, "nothing", "BootstrapFewShot's bootstrap attempts: " + _NO_DEMOS, same_here=(1,)),
    "demo_input_field_maxlen": Foreign(IGNORE, "nothing", "no demos are written"),  # SIMBA
    # how candidates are made and chosen
    "init_temperature": Foreign(WARN, "nothing", "the teacher's first batch uses its own temperature, the later ones "
                                "are sampled at temperature 1.0"),
    "temperature_for_sampling": Foreign(WARN, "nothing", "the student runs with its own settings"),  # SIMBA
    "temperature_for_candidates": Foreign(WARN, "nothing", "teacher rollouts after the first batch are sampled at "
                                          "temperature 1.0"),  # SIMBA
    "candidate_selection_strategy": Foreign(WARN, "nothing", "rules are chosen by greedy forward selection on the "
                                            "valset", same_here=("pareto",)),  # GEPA
    "component_selector": Foreign(WARN, "nothing", "the teacher names the predictor each rule is for",
                                  same_here=("round_robin", "all")),  # GEPA
    "use_merge": Foreign(WARN, "nothing", "rules join one set one at a time; there are no programs to merge",
                         same_here=(False,)),  # GEPA
    "max_merge_invocations": Foreign(WARN, "nothing", "there are no programs to merge"),  # GEPA
    "skip_perfect_score": Foreign(IGNORE, "nothing", "an example at the metric's maximum is never a mistake"),
    "add_format_failure_as_feedback": Foreign(IGNORE, "nothing", "the teacher always sees replies that did not "
                                              "parse, with their raw text"),  # GEPA
    "instruction_proposer": Foreign(REFUSE, _TEACHER, "the teacher_lm writes the rules; a custom proposer cannot be "
                                    "plugged in"),  # GEPA
    "code_proposer": Foreign(REFUSE, _TEACHER, "the teacher_lm writes the rules; a custom proposer cannot be "
                             "plugged in"),  # GEPA
    "gepa_kwargs": Foreign(REFUSE, "nothing", "options of the gepa engine have no equivalent here",
                           same_here=({},)),
    "failure_score": Foreign(REFUSE, "nothing", "a failed run scores 0.0 here", same_here=(0.0, 0)),  # GEPA
    "max_errors": Foreign(WARN, "nothing", "a program that raises makes a mistake for the teacher; a failing LM "
                          "stops the run"),  # MIPROv2, BootstrapFewShot
    # MIPROv2's search, compile arguments
    "minibatch": Foreign(WARN, "nothing", _MIPRO_SEARCH),
    "minibatch_size": Foreign(WARN, "nothing", _MIPRO_SEARCH),
    "minibatch_full_eval_steps": Foreign(WARN, "nothing", _MIPRO_SEARCH),
    "program_aware_proposer": Foreign(WARN, "nothing", "MIPROv2's proposer; the teacher always reads the program's "
                                      "predictors and their instructions"),
    "data_aware_proposer": Foreign(WARN, "nothing", "MIPROv2's proposer; the teacher reads the student's mistakes"),
    "view_data_batch_size": Foreign(WARN, "mistakes_per_batch", "MIPROv2's proposer"),
    "tip_aware_proposer": Foreign(WARN, "nothing", "MIPROv2's proposer"),
    "fewshot_aware_proposer": Foreign(WARN, "nothing", "MIPROv2's proposer; " + _NO_DEMOS),
    "requires_permission_to_run": Foreign(IGNORE, "nothing", "no prompt is shown: the projected cost is logged "
                                          "before the first call"),
    "provide_traceback": Foreign(IGNORE, "nothing", "a display option"),
    "eval_kwargs": Foreign(MAP, "num_threads", "its num_threads; display options have no effect, other keys are "
                           "ignored with a warning", convert=_eval_kwargs),  # COPRO compile
    "seed": Foreign(MAP, "seed", "compile(seed=...): the seed of that compile only"),  # SIMBA, MIPROv2
    # tracking and display
    "track_stats": Foreign(IGNORE, "result.distillation", "every rule's fate, gains and usage are always there"),
    "track_best_outputs": Foreign(IGNORE, "result.distillation", "mistakes and outcomes are always recorded"),
    "warn_on_score_mismatch": Foreign(IGNORE, "nothing", "a display option"),
    "use_mlflow": Foreign(WARN, "dspy_concept_distill.tracking", "the result is logged to the active MLflow run, "
                          "if there is one", same_here=(False,)),
    "use_wandb": Foreign(WARN, "result.save(dir)", "no Weights & Biases logging; save the report instead",
                         same_here=(False,)),
    "wandb_api_key": Foreign(IGNORE, "nothing", "no Weights & Biases logging"),
    "wandb_init_kwargs": Foreign(IGNORE, "nothing", "no Weights & Biases logging"),
}


def translate(kwargs: Mapping[str, Any], *, where: str, known: Iterable[str], given: Mapping[str, Any] | None = None,
              constructor: Iterable[str] = ()) -> dict[str, Any]:
    """Our parameters for other optimizers' ``kwargs``: refused and unknown names raise ``TypeError``, mapped ones
    come back by our names (one warning line for all of them), ignored ones are dropped (one warning line for those
    that merit it). ``given`` holds our parameters passed explicitly; a mapped name may not contradict one.
    ``constructor`` (for ``compile``): our constructor's parameters, named as such when given to ``compile``."""
    constructor = set(constructor)
    unknown = sorted(name for name in kwargs if name not in FOREIGN_PARAMETERS)
    refused = sorted(name for name in kwargs if name in FOREIGN_PARAMETERS and _counts(name, kwargs[name])
                     and FOREIGN_PARAMETERS[name].action is REFUSE)
    if unknown or refused:
        lines = [f"{name!r}: use {FOREIGN_PARAMETERS[name].here}: {FOREIGN_PARAMETERS[name].why}" for name in refused]
        lines += [f"{name!r}: a setting of the optimizer, give it to ConceptDistillation({name}=...)"
                  if name in constructor else f"{name!r}: not a parameter of ConceptDistillation" for name in unknown]
        raise TypeError(f"{where} got unexpected keyword arguments: " + "; ".join(lines)
                        + f". Its parameters are: {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    mapped, warned = [], []
    for name, value in kwargs.items():
        entry = FOREIGN_PARAMETERS[name]
        if not _counts(name, value) or entry.action is IGNORE:
            continue
        if entry.action is WARN:
            warned.append(f"{name}={_show(value)} ({entry.why})")
            continue
        values = entry.convert(value) if entry.convert is not None else {entry.here: value}
        for target, converted in values.items():
            if target in out and out[target] is not converted:
                raise TypeError(f"{where}: two parameters give {target}: pass one")
            if given is not None and given.get(target) is not None and given[target] is not converted:
                raise TypeError(f"{where}: {name}= is read as {target}=, which is given as well: pass one")
            out[target] = converted
            mapped.append(f"{name}={_show(value)} for this compile" if target == name
                          else f"{name}={_show(value)} as {target}={_show(converted)}")
    if mapped:
        logger.warning("%s: read other optimizers' parameters as ours: %s", where, "; ".join(mapped))
    if warned:
        logger.warning("%s: ignored other optimizers' parameters with no equivalent here: %s", where,
                       "; ".join(warned))
    return out


def _counts(name: str, value: Any) -> bool:
    """Whether a value asks for something: not None, and not what happens here anyway."""
    if value is None:
        return False
    same = FOREIGN_PARAMETERS[name].same_here
    return not any(type(value) is type(s) and value == s for s in same)


def _show(value: Any) -> str:
    """A value as a warning line shows it: an LM by its model name, anything else short."""
    model = getattr(value, "model", None)
    if isinstance(model, str):
        return f"LM({model!r})"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_OPTIMIZERS = ("COPRO", "MIPROv2", "GEPA", "SIMBA", "InferRules")
_HERE = {MAP: "read as {here}", IGNORE: "accepted, no effect", WARN: "accepted, ignored with a warning",
         REFUSE: "refused"}


def _users(name: str, own: set[str]) -> str:
    """Which of the installed DSPy's optimizers take ``name`` (constructor or compile); a constructor parameter of
    ours (``own``) is in the table for ``compile`` only."""
    import inspect

    import dspy.teleprompt as teleprompt

    found = []
    for optimizer in _OPTIMIZERS:
        cls = getattr(teleprompt, optimizer)
        init = [cls.__init__] + ([teleprompt.BootstrapFewShot.__init__] if optimizer == "InferRules" else [])
        at_init = name not in own and any(name in inspect.signature(m).parameters for m in init)
        at_compile = name in inspect.signature(cls.compile).parameters
        if at_init or at_compile:
            found.append(optimizer + ("" if at_init else " (compile)"))
    return ", ".join(found)


def _code(text: str) -> str:
    return f"`{text}`" if re.fullmatch(r"[\w.()=]+", text) else text


def markdown_table(own: Iterable[str] = ()) -> str:
    """The table as docs/swapping-in.md shows it (a test keeps the page equal to it); ``own``: our constructor's
    parameters."""
    own = set(own)
    rows = ["| their parameter | taken by | here | why |", "|---|---|---|---|"]
    for action in (MAP, IGNORE, WARN, REFUSE):
        for name in sorted(n for n, e in FOREIGN_PARAMETERS.items() if e.action is action):
            entry = FOREIGN_PARAMETERS[name]
            here = _HERE[action].format(here=_code(entry.here))
            if action is REFUSE and entry.here != "nothing":
                here += f": use {_code(entry.here)}"
            why = entry.why + (f"; `{entry.same_here[0]!r}` is accepted silently" if entry.same_here else "")
            rows.append(f"| `{name}` | {_users(name, own)} | {here} | {why} |")
    return "\n".join(rows)
