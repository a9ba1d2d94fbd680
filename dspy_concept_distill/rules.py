"""Rules ("concepts"), what the phases of a run find out about them (``RuleVerdict``, written into a rule by
``record_verdicts`` alone), rule sets, rendering into instructions, and JSON/Markdown I/O."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import dspy


class RuleStatus(StrEnum):
    CANDIDATE = "candidate"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


STATUSES = tuple(RuleStatus)

RULES_HEADER = "Follow these rules, learned from past mistakes:"
JSON_FORMAT = "dspy_concept_distill.rules/1"

MAX_RULE_CHARS = 400  # one rule, in characters (the word caps live in phases/rule_checks.py)
MAX_RULES_CHARS_PER_PREDICTOR = 2000  # all rules in force for one predictor, in characters of rule text


def normalize_rule_text(text: str) -> str:
    """One line, single spaces, no list marker: the form a rule is stored and rendered in."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return re.sub(r"^(?:[-*\u2022]|\d+[.)])\s+", "", text)


def fits_predictor_budget(rules_in_force: Iterable[Rule], rule: Rule) -> bool:
    """Whether ``rule`` can join ``rules_in_force`` without the rule text of its predictor (the sum of the rule
    texts' lengths, ``rule`` included) going over ``MAX_RULES_CHARS_PER_PREDICTOR``. Rules of other predictors
    do not count."""
    used = sum(len(r.text) for r in rules_in_force if r.predictor == rule.predictor)
    return used + len(rule.text) <= MAX_RULES_CHARS_PER_PREDICTOR


def rule_id(predictor: str, text: str) -> str:
    digest = hashlib.sha1(f"{predictor}\x00{normalize_rule_text(text).lower()}".encode()).hexdigest()
    return f"r{digest[:10]}"


@dataclass(frozen=True)
class Adherence:
    """Does the student act on a rule? Measured on ``examples`` already run with and without it (no new LM call):
    on how many of them an output ``changed``, how many mistakes were ``fixed``, and ``ignored`` when no output
    changed."""

    where: str  # "source mistakes" (the training mistakes it was written for) or "valset failures"
    examples: int
    changed: int
    fixed: int
    ignored: bool


@dataclass
class Rule:
    """A candidate instruction for one predictor, and what verification found out about it.

    ``gain`` is the change in mean valset score the rule brought when added to the rules in force at the
    time it was tested (metric units, e.g. ``0.05`` is one example in twenty for a 0/1 metric).
    """

    text: str
    predictor: str
    source_mistakes: list[str] = field(default_factory=list)
    status: RuleStatus = RuleStatus.CANDIDATE
    reason: str = ""
    gain: float | None = None
    evaluated_on: int = 0
    round: int = 0
    batch: int | None = None
    duplicates: list[str] = field(default_factory=list)
    attempts: int = 1  # how many rounds it was verified in (a near miss may be proposed and measured again)
    gain_ci: list[float] | None = None  # paired 95% confidence interval [low, high] of ``gain`` on the valset
    adherence: Adherence | None = None  # does the student act on it? (kept rules)
    ablation_gain: float | None = None  # valset score lost when it alone is left out of the final rule set
    placement_of: str | None = None  # the id of the rule whose text this one races in another predictor
    id: str = ""
    # Set for a rule found in the program's instructions when the compile began (re-optimizing): where it came from,
    # ``{"source": ..., "earlier": {...}}`` with what the earlier compile measured when the program carries it
    inherited: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.text = normalize_rule_text(self.text)
        if not self.text:
            raise ValueError("a rule needs non-empty text")
        if not isinstance(self.predictor, str) or not self.predictor:
            raise ValueError(f"rule {self.text!r} needs the name of the predictor it targets")
        if self.status not in STATUSES:
            raise ValueError(f"rule status must be one of {[str(s) for s in STATUSES]}, got {self.status!r}")
        self.status = RuleStatus(self.status)
        if isinstance(self.adherence, dict):  # as ``to_dict`` writes it
            self.adherence = Adherence(**self.adherence)
        if not self.id:
            self.id = rule_id(self.predictor, self.text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rule:
        if not isinstance(data, dict):
            raise ValueError(f"a rule must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown rule fields {unknown}; expected some of {sorted(known)}")
        if "text" not in data or "predictor" not in data:
            raise ValueError(f"a rule needs 'text' and 'predictor', got keys {sorted(data)}")
        return cls(**data)


@dataclass(frozen=True)
class RuleVerdict:
    """What one phase of a run found out about one rule in one round: phases return verdicts, and
    ``record_verdicts`` alone writes them into the rules' public fields at the end of the phase. A finding left
    None leaves the rule's field as it is."""

    rule_id: str
    round: int
    status: RuleStatus | None = None
    reason: str | None = None
    gain: float | None = None  # the valset gain over the rules in force it was raced against
    evaluated_on: int | None = None  # the examples that gain was measured on
    gain_ci: tuple[float, float] | None = None
    adherence: Adherence | None = None
    ablation_gain: float | None = None

    @classmethod
    def accept(cls, rule: Rule, *, gain: float, evaluated_on: int, reason: str,
               gain_ci: tuple[float, float] | None = None, adherence: Adherence | None = None) -> RuleVerdict:
        return cls(rule.id, rule.round, RuleStatus.ACCEPTED, reason, gain, evaluated_on, gain_ci, adherence)

    @classmethod
    def reject(cls, rule: Rule, reason: str, *, gain: float | None = None,
               evaluated_on: int | None = None) -> RuleVerdict:
        return cls(rule.id, rule.round, RuleStatus.REJECTED, reason, gain, evaluated_on)


_VERDICT_FIELDS = ("status", "reason", "gain", "evaluated_on", "adherence", "ablation_gain")


def record_verdicts(rules: Iterable[Rule], verdicts: Iterable[RuleVerdict]) -> None:
    """Write ``verdicts`` into the ``rules`` they are about (matched by rule id and round): the one place a run sets a
    rule's status, reason, gain, interval, adherence or ablation gain."""
    by_key = {(rule.id, rule.round): rule for rule in rules}
    for verdict in verdicts:
        rule = by_key[(verdict.rule_id, verdict.round)]
        for name in _VERDICT_FIELDS:
            if (value := getattr(verdict, name)) is not None:
                setattr(rule, name, value)
        if verdict.gain_ci is not None:
            rule.gain_ci = list(verdict.gain_ci)


def render_instructions(base_instructions: str, rules: Iterable[Rule | str]) -> str:
    """The base instructions followed by a numbered rule list (the base alone when there are no rules). Rules the
    base already lists (instructions this function wrote) stay first, in one list with the new ones; a rule already
    listed is not listed again."""
    base, texts = split_instructions(base_instructions)
    seen = {t.lower() for t in texts}
    for rule in rules:
        text = rule.text if isinstance(rule, Rule) else normalize_rule_text(rule)
        if text.lower() not in seen:
            seen.add(text.lower())
            texts.append(text)
    if not texts:
        return base_instructions
    listed = "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))
    base = base.rstrip()
    return f"{base}\n\n{RULES_HEADER}\n{listed}" if base else f"{RULES_HEADER}\n{listed}"


_RULE_LINE = re.compile(r"^(\d+)\. (\S.*)$")


def split_instructions(instructions: str) -> tuple[str, list[str]]:
    """The base instructions and the rule texts of the list ``render_instructions`` wrote at their end; the
    instructions unchanged and no rules when they end in no such list (or in one followed by other text). Lists
    stacked by an earlier version (the header more than once, each list numbered from 1) are read as one, each rule
    once."""
    base = instructions
    texts: list[str] = []
    while True:
        head, sep, block = base.rpartition(RULES_HEADER + "\n")
        if not sep or (head and not head.endswith("\n\n")):
            break
        lines = block.rstrip("\n").split("\n")
        found = [m for m in map(_RULE_LINE.match, lines) if m is not None]
        if not lines or len(found) != len(lines) or [int(m.group(1)) for m in found] != list(range(1, len(lines) + 1)):
            break
        base, texts = head[:-2] if head else "", [m.group(2) for m in found] + texts
    unique: dict[str, str] = {}
    for text in texts:  # a rule listed twice is one rule
        unique.setdefault(text.lower(), text)
    return base, list(unique.values())


def predictor_names(program: dspy.Module) -> list[str]:
    return [name for name, _ in program.named_predictors()]


class RuleSet:
    """Ordered rules per predictor: what gets rendered into a program's instructions.

    A RuleSet is a value: ``with_rule`` returns a new set, so a set can key the evaluation cache.
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._rules: list[Rule] = []
        seen: set[tuple[str, str]] = set()
        for rule in rules:
            if not isinstance(rule, Rule):
                raise TypeError(f"RuleSet holds Rule objects, got {type(rule).__name__}")
            key = (rule.predictor, rule.text.lower())
            if key not in seen:
                seen.add(key)
                self._rules.append(rule)

    # -- container protocol -------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuleSet) and self.signature() == other.signature()

    def __hash__(self) -> int:
        return hash(self.signature())

    def __repr__(self) -> str:
        return f"RuleSet({[(r.predictor, r.text) for r in self._rules]!r})"

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)

    def signature(self) -> tuple[tuple[str, str], ...]:
        return tuple((r.predictor, r.text) for r in self._rules)

    def for_predictor(self, name: str) -> list[Rule]:
        return [r for r in self._rules if r.predictor == name]

    def predictors(self) -> list[str]:
        return list(dict.fromkeys(r.predictor for r in self._rules))

    def with_rule(self, rule: Rule) -> RuleSet:
        return RuleSet([*self._rules, rule])

    # -- applying to programs -----------------------------------------------------------------------------------
    def check_program(self, program: dspy.Module) -> None:
        names = predictor_names(program)
        missing = [p for p in self.predictors() if p not in names]
        if missing:
            raise ValueError(
                f"the rule set targets predictors {missing} that the program does not have; it has {names}"
            )

    def apply(self, program: dspy.Module, base_instructions: dict[str, str] | None = None) -> dspy.Module:
        """A deep copy of ``program`` whose predictors carry these rules; ``program`` itself is not changed.

        ``base_instructions`` maps predictor names to the instructions the rules are appended to (default: the
        program's current instructions). Instructions that already end in a rule list (an optimized program's) keep
        it, and the rules join that list, each once. Signatures are replaced with ``with_instructions``, never
        edited.
        """
        self.check_program(program)
        new = program.deepcopy()
        for name, predictor in new.named_predictors():
            rules = self.for_predictor(name)
            base = (base_instructions or {}).get(name, predictor.signature.instructions)
            if rules or base != predictor.signature.instructions:
                predictor.signature = predictor.signature.with_instructions(render_instructions(base, rules))
        return new

    # -- I/O ------------------------------------------------------------------------------------------------------
    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"format": JSON_FORMAT, "rules": [r.to_dict() for r in self._rules]}, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> RuleSet:
        """Read a rule set from a JSON string or a path to a JSON file written by ``to_json``."""
        text = _read_source(source)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"rule set JSON does not parse: {exc}") from exc
        if isinstance(data, list):
            items = data
        elif isinstance(data, dict) and isinstance(data.get("rules"), list):
            if data.get("format", JSON_FORMAT) != JSON_FORMAT:
                raise ValueError(f"unsupported rule set format {data.get('format')!r}; expected {JSON_FORMAT!r}")
            items = data["rules"]
        else:
            raise ValueError("rule set JSON must be a list of rules or an object with a 'rules' list")
        return cls(Rule.from_dict(item) for item in items)

    def to_markdown(self, path: str | Path | None = None) -> str:
        lines = ["# Concept Distillation rules", ""]
        for name in self.predictors():
            lines += [f"## Predictor `{name}`", ""]
            for rule in self.for_predictor(name):
                gain = "" if rule.gain is None else f" <!-- gain {rule.gain:+.4f} -->"
                lines.append(f"- {rule.text}{gain}")
            lines.append("")
        text = "\n".join(lines)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_markdown(cls, source: str | Path) -> RuleSet:
        """Read rules written by ``to_markdown``: ``## Predictor `name``` headings followed by ``- rule`` bullets."""
        text = _read_source(source)
        rules: list[Rule] = []
        current: str | None = None
        for number, line in enumerate(text.splitlines(), 1):
            heading = re.match(r"^##\s+(?:Predictor\s+)?`?([^`]+?)`?\s*$", line.strip())
            if heading:
                current = heading.group(1).strip()
                continue
            bullet = re.match(r"^\s*[-*]\s+(.*)$", line)
            if bullet:
                if current is None:
                    raise ValueError(f"line {number}: rule before any '## Predictor `name`' heading: {line.strip()!r}")
                body = bullet.group(1)
                gain_match = re.search(r"<!--\s*gain\s*([-+0-9.eE]+)\s*-->", body)
                body = re.sub(r"<!--.*?-->", "", body).strip()
                if body:
                    gain = float(gain_match.group(1)) if gain_match else None
                    rules.append(Rule(text=body, predictor=current, gain=gain, status=RuleStatus.ACCEPTED))
        return cls(rules)


def _read_source(source: str | Path) -> str:
    if isinstance(source, Path):
        return source.read_text(encoding="utf-8")
    stripped = source.lstrip()
    if stripped.startswith(("{", "[", "#", "-")) or "\n" in source:
        return source
    path = Path(source)
    if path.exists():
        return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"no rule file at {source!r} (and the string is not JSON or Markdown)")
