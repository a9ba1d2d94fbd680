"""After verification (optional): leave each accepted rule out of the final set in turn and record what it is worth
once the others are in."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dspy

from ..rules import RuleSet, RuleVerdict
from ..runtime.evaluator import STOPPING_ERRORS, Evaluator
from ..runtime.metering import phase

logger = logging.getLogger(__name__)


def ablation_cost(rules: RuleSet, valset: Sequence[dspy.Example]) -> int:
    """Most program runs ``ablate`` can make."""
    return len(rules) * len(valset)


def ablate(evaluator: Evaluator, rules: RuleSet, valset: Sequence[dspy.Example], final_scores: Sequence[float],
           min_gain: float) -> tuple[list[RuleVerdict], BaseException | None]:
    """Leave each rule of ``rules`` out in turn and measure the valset score it is worth now (a verdict with its
    ``ablation_gain``); a rule worth less than ``min_gain`` no longer adds anything once the others are in. Returns
    the verdicts and what stopped it early, or None."""
    final = sum(final_scores) / len(final_scores)
    verdicts: list[RuleVerdict] = []
    try:
        with phase("ablation"):
            for rule in rules:
                without = RuleSet([r for r in rules if r is not rule])
                scores = [o.score for o in evaluator.run([(without, ex) for ex in valset], "ablation")]
                worth = final - sum(scores) / len(scores)
                verdicts.append(RuleVerdict(rule.id, rule.round, ablation_gain=worth))
                if worth < min_gain:
                    logger.warning("ablation: rule %r adds %+.3f once the others are in (below min_gain %g)",
                                   rule.text[:80], worth, min_gain)
    except STOPPING_ERRORS as exc:
        logger.info("ablation stopped early: %s", exc)
        return verdicts, exc
    return verdicts, None
