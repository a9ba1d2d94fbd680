"""Near-duplicate rule texts: two wordings of one rule are verified once, the second merged into the first."""

from __future__ import annotations

import difflib

from .rule_checks import words_of

DUPLICATE_OVERLAP = 0.8
DUPLICATE_JACCARD = 0.5
DUPLICATE_RATIO = 0.85
_STOPWORDS = frozenset(
    "a an the of to in on for and or is are be by with as at it its this that these those from into when if then "
    "than your you always never do not any all each every must should".split()
)


def _stem(word: str) -> str:
    for suffix, replacement in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if len(word) > 4 and word.endswith(suffix):
            return word[: -len(suffix)] + replacement
    return word


def _content_words(text: str) -> set[str]:
    return {_stem(w) for w in words_of(text) if w not in _STOPWORDS}


def similar(a: str, b: str) -> bool:
    """Near-duplicate test for rule texts: nearly the same characters, or nearly the same content words (the
    smaller set mostly inside the larger, and the two sets mostly shared)."""
    matcher = difflib.SequenceMatcher(None, a.lower(), b.lower())
    # quick_ratio and real_quick_ratio are cheap upper bounds of ratio: most pairs are told apart by them
    if matcher.real_quick_ratio() >= DUPLICATE_RATIO and matcher.quick_ratio() >= DUPLICATE_RATIO \
            and matcher.ratio() >= DUPLICATE_RATIO:
        return True
    wa, wb = _content_words(a), _content_words(b)
    if not wa or not wb:
        return False
    shared = len(wa & wb)
    return shared / min(len(wa), len(wb)) >= DUPLICATE_OVERLAP and shared / len(wa | wb) >= DUPLICATE_JACCARD
