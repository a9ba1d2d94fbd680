"""What a run will cost, said before it pays: LM calls from the preset's bounds, tokens from the prompt sizes, USD
from the price table (where the models have a price). Refined from measured tokens after the first phase."""

from __future__ import annotations

import logging
from typing import Any

import dspy

from ..records import CallBounds
from .ledger import Ledger
from .metering import STUDENT, TEACHER, Budget
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


def project(bounds: CallBounds, *, program: dspy.Module, example: dspy.Example, base_instructions: dict[str, str],
            teacher: Any, mistakes_per_batch: int, budget: Budget) -> dict[str, float | None]:
    """Log the projected spend and return ``{"low": usd, "high": usd}`` (None where a model has no price); tell
    ``budget`` what one request of each role is expected to cost (for token and USD limits)."""
    student = _lm_of(program)
    predictors = len(base_instructions)
    prompt = _prompt_tokens(program, example, base_instructions) * predictors
    max_out = (getattr(student, "kwargs", {}) or {}).get("max_tokens")
    out_low, out_high = STUDENT_OUTPUT_TOKENS if not max_out else (min(STUDENT_OUTPUT_TOKENS[0], max_out), max_out)
    student_model = getattr(student, "model", "?")
    low = _usd(student_model, bounds.student_low, prompt, out_low)
    high = _usd(student_model, bounds.student_high, prompt, out_high)
    budget.expect(STUDENT, prompt / predictors + out_high, _usd(student_model, 1, prompt, out_high))
    if teacher is not None:
        teacher_model = getattr(teacher, "model", "?")
        teacher_prompt = predictors * 150 + mistakes_per_batch * 400 + 900
        teacher_out = (getattr(teacher, "kwargs", {}) or {}).get("max_tokens") or TEACHER_OUTPUT_TOKENS
        t_cost = _usd(teacher_model, bounds.teacher, teacher_prompt, teacher_out)
        t_low = _usd(teacher_model, max(1, bounds.teacher // 4), teacher_prompt, teacher_out // 2)
        budget.expect(TEACHER, teacher_prompt + teacher_out, _usd(teacher_model, 1, teacher_prompt, teacher_out))
        low = None if low is None or t_low is None else low + t_low
        high = None if high is None or t_cost is None else high + t_cost
    if high is None:
        logger.info("before the run: student %d-%d LM calls (about %d prompt tokens each), teacher at most %d calls; "
                    "no USD projection (no price known for %s)", bounds.student_low, bounds.student_high, prompt,
                    bounds.teacher, student_model if low is None else getattr(teacher, "model", "?"))
    else:
        logger.info("before the run: student %d-%d LM calls (about %d prompt tokens each), teacher at most %d calls; "
                    "projected cost $%.4f-$%.4f", bounds.student_low, bounds.student_high, prompt, bounds.teacher,
                    low or 0.0, high)
    return {"low": low, "high": high}


def refine(ledger: Ledger, bounds: CallBounds) -> None:
    """After the first phase: the projection again, from the tokens the student actually used per request."""
    calls, tokens, cost = ledger.spend(STUDENT)
    if not calls:
        return
    per_call = tokens / calls
    remaining = max(0, bounds.student_high - ledger.calls(STUDENT))
    if cost:
        logger.info("after the trainset run: %.0f tokens and $%.5f per student call measured; the rest of the run "
                    "costs at most $%.4f for the student (%d calls left in its budget), plus $%.4f spent",
                    per_call, cost / calls, cost / calls * remaining, remaining, cost + ledger.spend(TEACHER)[2])
    else:
        logger.info("after the trainset run: %.0f tokens per student call measured; at most %d student calls left",
                    per_call, remaining)
