"""What a test checks of a finished compile's evidence, apart from the returned program.

``final_score >= baseline_score`` holds for every result and so checks nothing of verification: a compile whose rules
score lower than the starting instructions returns the starting instructions, with ``final_score = baseline_score``.
``assert_verified`` checks the evidence verification recorded before that fallback."""

from __future__ import annotations

from typing import Any

EPS = 1e-9


def verification_problems(result: Any) -> list[str]:
    """What is wrong with the evidence of ``result`` (a ``DistillationResult``): an accepted rule that did not show a
    valset gain above ``min_gain`` on the examples it raced (a lower confidence bound above ``min_gain`` is what
    accepts a rule, so its measured gain is above it too), or a round that left the valset score of the rules in force
    lower than it found it. Empty when there is nothing wrong."""
    problems = [f"accepted rule {rule.id} ({rule.text!r}) gained {rule.gain} on {rule.evaluated_on} examples, not "
                f"above min_gain {result.min_gain}"
                for rule in result.accepted_rules
                if rule.gain is None or not rule.evaluated_on or rule.gain <= result.min_gain]
    problems += [f"round {summary.round} lowered the valset score from {summary.val_score_before:.3f} to "
                 f"{summary.val_score_after:.3f}"
                 for summary in result.rounds
                 if summary.val_score_before is not None and summary.val_score_after is not None
                 and summary.val_score_after < summary.val_score_before - EPS]
    return problems


def assert_verified(result: Any) -> None:
    """Raise ``AssertionError`` naming every problem ``verification_problems`` finds in ``result``."""
    problems = verification_problems(result)
    if problems:
        raise AssertionError("verification did not hold up: " + "; ".join(problems))
