"""What a run will cost, said before it pays: LM calls from the budget, tokens from the prompt sizes, USD from the
price table (where the models have a price). After the first trainset pass, the LM calls one program run makes are
measured (``calls_per_run``): a budget stated in program runs is converted to LM calls with them, and the projection
is said again from the measured tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dspy

from ..records import CallBounds, CostForecast, Limits, Outcome
from .ledger import Ledger
from .metering import Budget, Role
from .pricing import rates

logger = logging.getLogger(__name__)

TEACHER_OUTPUT_TOKENS = 800  # a reply with diagnoses and a few rules, when the teacher LM sets no max_tokens
STUDENT_OUTPUT_TOKENS = (20, 300)  # a short answer .. a long one, when the student LM sets no max_tokens


def _lm_of(program: dspy.Module) -> Any:
    return next((p.lm for _, p in program.named_predictors() if p.lm is not None), None) or dspy.settings.lm


def _prompt_tokens(program: dspy.Module, example: dspy.Example, base_instructions: dict[str, str]) -> int:
    """Tokens of one student request, from the first predictor's prompt on ``example`` (chars / 4)."""
    name, predictor = program.named_predictors()[0]
    try:
        messages = dspy.ChatAdapter().format(predictor.signature, demos=[], inputs=dict(example.inputs()))
        chars = sum(len(str(m.get("content", ""))) for m in messages)
    except Exception:  # advisory only
        chars = len(base_instructions.get(name, "")) + sum(len(str(v)) for v in example.inputs().values())
    return max(1, chars // 4)


def _usd(model: str, calls: int, tokens_in: int, tokens_out: int) -> float | None:
    found = rates(model)
    return None if found is None else calls * (tokens_in * found[0] + tokens_out * found[1])


def calls_per_run(outcomes: Sequence[Outcome]) -> float:
    """The mean LM calls of one program run over ``outcomes`` (1 when none made a call): what converts a budget in
    program runs to LM calls. The mean, not the most: a budget of R runs then pays for about R runs; a run that makes
    more calls than the mean takes more of it, one that makes fewer leaves more for the others."""
    total = sum(o.calls for o in outcomes)
    return total / len(outcomes) if total > 0 else 1.0


def call_bounds(limits: Limits, *, first_pass_runs: int, assumed_calls_per_run: float) -> CallBounds:
    """LM calls the run will make: at least the first pass (trainset and valset once), at most the budget; a budget
    in program runs is converted at ``assumed_calls_per_run`` until the calls are measured."""
    low = round(first_pass_runs * assumed_calls_per_run)
    high = limits.student_calls
    if high is None and limits.program_runs is not None:
        high = limits.converted(assumed_calls_per_run).student_calls
    return CallBounds(low, high if high is not None else low, limits.teacher_calls or 0)


def project(bounds: CallBounds, *, program: dspy.Module, example: dspy.Example, base_instructions: dict[str, str],
            teacher: Any, mistakes_per_batch: int, budget: Budget, limits: Limits | None = None,
            assumed_calls_per_run: float = 1.0) -> CostForecast:
    """Log the projected spend and return it (USD None where a model has no price); tell ``budget`` what one
    request of each role is expected to cost (for token and USD limits). With ``limits`` in program runs, the line
    says the budget is in runs and the calls per run it assumes until they are measured."""
    student = _lm_of(program)
    predictors = len(base_instructions)
    prompt = _prompt_tokens(program, example, base_instructions) * predictors
    max_out = (getattr(student, "kwargs", {}) or {}).get("max_tokens")
    out_low, out_high = STUDENT_OUTPUT_TOKENS if not max_out else (min(STUDENT_OUTPUT_TOKENS[0], max_out), max_out)
    student_model = getattr(student, "model", "?")
    low = _usd(student_model, bounds.student_low, prompt, out_low)
    high = _usd(student_model, bounds.student_high, prompt, out_high)
    budget.expect(Role.STUDENT, prompt / predictors + out_high, _usd(student_model, 1, prompt, out_high))
    if teacher is not None:
        teacher_model = getattr(teacher, "model", "?")
        teacher_prompt = predictors * 150 + mistakes_per_batch * 400 + 900
        teacher_out = (getattr(teacher, "kwargs", {}) or {}).get("max_tokens") or TEACHER_OUTPUT_TOKENS
        t_cost = _usd(teacher_model, bounds.teacher, teacher_prompt, teacher_out)
        t_low = _usd(teacher_model, max(1, bounds.teacher // 4), teacher_prompt, teacher_out // 2)
        budget.expect(Role.TEACHER, teacher_prompt + teacher_out, _usd(teacher_model, 1, teacher_prompt, teacher_out))
        low = None if low is None or t_low is None else low + t_low
        high = None if high is None or t_cost is None else high + t_cost
    runs = ""
    if limits is not None and limits.program_runs is not None:
        runs = (f" (a budget of {limits.program_runs:g} program runs, converted at {assumed_calls_per_run:g} LM "
                f"call(s) per run until the trainset run measures them)")
    if high is None:
        logger.info("before the run: student %d-%d LM calls%s (about %d prompt tokens each), teacher at most %d "
                    "calls; no USD projection (no price known for %s)", bounds.student_low, bounds.student_high, runs,
                    prompt, bounds.teacher, student_model if low is None else getattr(teacher, "model", "?"))
    else:
        logger.info("before the run: student %d-%d LM calls%s (about %d prompt tokens each), teacher at most %d "
                    "calls; projected cost $%.4f-$%.4f", bounds.student_low, bounds.student_high, runs, prompt,
                    bounds.teacher, low or 0.0, high)
    return CostForecast(bounds, low, high)


def refine(ledger: Ledger, limits: Limits) -> None:
    """After the first pass: the calls per program run measured (and the budget in runs they converted), then the
    projection again from the tokens the student actually used per request."""
    calls, tokens, cost = ledger.spend(Role.STUDENT)
    measured = ""
    if limits.calls_per_run is not None:
        measured = f"{limits.calls_per_run:.1f} LM calls per program run measured"
        if limits.program_runs is not None:
            measured += (f": the student budget of {limits.program_runs:g} program runs is {limits.student_calls} "
                         "LM calls")
        measured += "; "
    if not calls:
        if measured:
            logger.info("after the trainset run: %s", measured.rstrip("; "))
        return
    per_call = tokens / calls
    remaining = None if limits.student_calls is None else max(0, limits.student_calls - ledger.calls(Role.STUDENT))
    left = "no limit on student calls" if remaining is None else f"at most {remaining} student calls left"
    if cost and remaining is not None:
        logger.info("after the trainset run: %s%.0f tokens and $%.5f per student call measured; the rest of the run "
                    "costs at most $%.4f for the student (%d calls left in its budget), plus $%.4f spent", measured,
                    per_call, cost / calls, cost / calls * remaining, remaining, cost + ledger.spend(Role.TEACHER)[2])
    else:
        logger.info("after the trainset run: %s%.0f tokens per student call measured; %s", measured, per_call, left)
