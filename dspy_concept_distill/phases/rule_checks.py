"""Checks on the rule text a teacher writes: length caps and leaks of training data.

The leak check tells a label vocabulary from a leaked answer. A rule may name the labels of a classification task
("Answer with one word: positive or negative."), the most useful rule there often is; it may not state the gold
answer of a particular training example ("If unsure, answer 347."). ``label_vocabulary`` draws the line.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import dspy

from ..rules import MAX_RULE_CHARS
from ..text import clip_text

MAX_RULE_WORDS = 60
MIN_RULE_WORDS = 3
LEAK_NGRAM = 8
MAX_LABEL_CLASSES = 20
MIN_LABEL_SUPPORT = 2
_TRIVIAL_GOLDS = frozenset({"yes", "no", "true", "false", "none", "null", "n/a", "na", "unknown"})
_NUMBER = re.compile(r"[-+]?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")

GoldKey = str | float


def length_problem(text: str) -> str | None:
    """Why a rule text is too long or too short to be an instruction, or None. Characters are capped as well as
    words, so one huge token cannot pass as a three-word rule."""
    if len(text) > MAX_RULE_CHARS:
        return f"too long ({len(text):,} characters; a rule has at most {MAX_RULE_CHARS} characters)"
    words = len(text.split())
    if words > MAX_RULE_WORDS:
        return f"too long ({words} words; a rule has at most {MAX_RULE_WORDS})"
    if words < MIN_RULE_WORDS:
        return f"too short to be an instruction ({words} word(s); a rule has at least {MIN_RULE_WORDS})"
    return None


def label_vocabulary(trainset: Sequence[dspy.Example]) -> dict[str, set[GoldKey]]:
    """Per label field, the gold values a rule may name, in normalized form (numbers as floats, text lower-cased
    with single spaces).

    For each value, its *support* is the number of training examples whose gold is that value (for a list-valued
    gold: contains it); ``k`` is the number of distinct values of the field and ``total`` the sum of supports.

    - The field is a **label set** when ``k <= MAX_LABEL_CLASSES`` (20) and ``total >= 2 * k``: a few classes,
      each the gold of two examples on average. Every one of its values is vocabulary, including one that is
      the gold of a single example (a rare class).
    - Otherwise a text value is vocabulary when its support is at least ``MIN_LABEL_SUPPORT`` (2). A number is
      not: arithmetic answers coincide by chance (98% of MultiArith's 600 answers are shared with another
      problem), so a shared number is still the answer to particular problems.

    Anything else is tied to particular examples, and a rule that contains it leaks the answer.
    """
    supports: dict[str, Counter[GoldKey]] = {}
    for example in trainset:
        for name, value in _labels(example).items():
            keys = {key for key in map(_gold_key, _gold_items(value)) if key is not None}
            supports.setdefault(name, Counter()).update(keys)
    vocabulary: dict[str, set[GoldKey]] = {}
    for name, support in supports.items():
        classes, total = len(support), sum(support.values())
        if classes <= MAX_LABEL_CLASSES and total >= 2 * classes:
            vocabulary[name] = set(support)
        else:
            vocabulary[name] = {v for v, n in support.items() if isinstance(v, str) and n >= MIN_LABEL_SUPPORT}
    return vocabulary


class LeakChecker:
    """Rejects rules that leak training data: a gold answer that is not label vocabulary (see
    ``label_vocabulary``), or a run of ``ngram`` words copied from a training example."""

    def __init__(self, trainset: Sequence[dspy.Example], ngram: int = LEAK_NGRAM) -> None:
        self.ngram = ngram
        self.vocabulary = label_vocabulary(trainset)
        self._ngrams: set[tuple[str, ...]] = set()
        for ex in trainset:
            for value in ex.values():
                self._ngrams.update(_ngrams(words_of(str(value)), ngram))

    def check(self, text: str, golds: Sequence[Mapping[str, Any]]) -> str | None:
        """Why ``text`` leaks, or None. ``golds`` are the gold labels (field -> value) of the mistakes the rule
        was written from."""
        words = words_of(text)
        for gold in golds:
            for name, value in gold.items():
                leaked = self._leaked_value(text, words, name, value)
                if leaked is not None:
                    shown = int(leaked) if isinstance(leaked, float) and leaked.is_integer() else leaked
                    return (f"leaks training data: contains the gold answer {clip_text(shown)!r} of field "
                            f"{clip_text(name)!r}, which is not a label shared by several training examples")
        copied = next((g for g in _ngrams(words, self.ngram) if g in self._ngrams), None)
        if copied:
            quoted = clip_text(" ".join(copied))
            return f"leaks training data: copies {self.ngram} consecutive words from a training example ({quoted!r})"
        return None

    def _leaked_value(self, text: str, words: list[str], name: str, value: Any) -> Any:
        vocabulary = self.vocabulary.get(name, set())
        for item in _gold_items(value):
            if _gold_key(item) not in vocabulary and _contains_value(text, words, item):
                return item
        return None


def words_of(text: str) -> list[str]:
    """Lower-case words and numbers of ``text`` (decimals kept whole)."""
    return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _labels(example: dspy.Example) -> dict[str, Any]:
    try:
        return dict(example.labels().items())
    except ValueError:  # no input fields declared: every field may be a label
        return dict(example.items())


def _gold_items(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return [item for v in value for item in _gold_items(v)]
    return [] if value is None else [value]


def _number(text: str) -> float | None:
    text = text.strip()
    return float(text.replace(",", "")) if _NUMBER.fullmatch(text) else None


def _gold_key(value: Any) -> GoldKey | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    text = " ".join(str(value).split()).lower()
    number = _number(text)
    return number if number is not None else (text or None)


def _contains_value(text: str, words: list[str], value: Any) -> bool:
    value_text = " ".join(str(value).split())
    number = _number(value_text)
    if number is not None:
        if number.is_integer() and abs(number) < 10:
            return False  # single digits ("round to 2 places") are not evidence of a leak
        return any(_number(w) == number for w in words)
    if len(value_text) < 3 or value_text.lower() in _TRIVIAL_GOLDS:
        return False
    if len(words_of(value_text)) > LEAK_NGRAM:
        return False  # long golds (sentences, code) are caught by the n-gram check instead
    line = " ".join(text.lower().split())
    return re.search(rf"(?<!\w){re.escape(value_text.lower())}(?!\w)", line) is not None
