"""The task family: named simulated tasks (scripted LMs, NOT real models) that together cover every axis of issues 6
and 14.

Axes: effect mode (concept-specific, diffuse), effect sizes (+5 to +25 points), noise (flip rate 0 to 0.2), 1- and
2-predictor programs, valsets of 20, 40 and 100 (trainsets of the same size), the proposer (``blind``: every
optimizer, ConceptDistillation included, gets ``SimulatedProposerEngine`` drawing at random from the task's rule
pool; ``teacher``: ConceptDistillation gets the diagnosing scripted teacher, DSPy's optimizers the blind proposer),
and seeds 0-9. Issue 14 adds six kinds (``ISSUE14_TASKS``): a pool of cheap generic rules (kind ``generic``), a
partial-credit metric (``metric``), a tempting rule a diagnosing teacher proposes before its conditional form
(``subgroup``, kind ``tempting``), 200/200 examples, a proposer that puts rules in a random predictor
(``placement``) and a program making five LM calls per run (``program``). Every task also has a separate test
split of ``n_test`` examples. ``TASKS`` lists them; see ``FamilyTask.describe()`` and the "Task family" section
of benchmarks/README.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import dspy

from dspy_concept_distill.testing import (
    ALL,
    PLAIN,
    Concept,
    Distractor,
    SimulatedWorld,
    default_concepts,
    default_distractors,
)

from .proposer import PoolRule, proposer_lm
from .worlds import (
    DiffuseWorld,
    NotesDiffuseWorld,
    SubgroupWorld,
    best_rule_set,
    concept_expected_accuracy,
    make_program,
    partial_credit_expected,
    partial_credit_metric,
    predictor_names,
    program_shape,
    program_stages,
    rules_in_force,
    stages_with,
)

N_TEST = 200
P_RULE = 0.4  # the blind proposer's chance to include each pool rule in a proposal
KINDS = ("helpful", "harmful", "tempting", "generic", "neutral")  # pool rule kinds, as reports count them
METRICS = {"exact": SimulatedWorld.metric, "partial-credit": partial_credit_metric}


@dataclass(frozen=True)
class FamilyTask:
    """One task of the family. Diffuse tasks use ``baseline``, ``redraw`` and ``rules``; concept tasks use
    ``concepts``, ``distractors`` and ``shares`` (category -> share of the examples, ``plain`` first).

    Issue 14's kinds use the fields after ``p_rule`` (each at its default elsewhere): ``program`` (a shape of
    ``worlds.PROGRAMS``; empty: by ``predictors``), ``metric`` (``exact`` or ``partial-credit``: the oracle is
    then the expected score), ``placement`` (``random``: the proposer's rule objects name a random predictor),
    and for a concept world with subgroups ``easy`` and ``hard`` categories and the ``subgroup`` whose mistakes
    make the teacher propose the tempting rule first (``worlds.SubgroupWorld``).
    """

    name: str
    summary: str
    mode: str  # "concept" | "diffuse"
    proposer: str  # "blind" | "teacher"
    n_train: int
    n_val: int
    n_test: int = N_TEST
    predictors: int = 1
    flip_rate: float = 0.0
    baseline: float = 0.0
    redraw: float = 0.0
    rules: tuple[PoolRule, ...] = ()
    concepts: tuple[Concept, ...] = ()
    distractors: tuple[Distractor, ...] = ()
    shares: tuple[tuple[str, float], ...] = ()
    p_rule: float = P_RULE
    program: str = ""
    metric: str = "exact"
    placement: str = "own"
    easy: tuple[str, ...] = ()
    hard: tuple[str, ...] = ()
    subgroup: str = ""

    def build(self, seed: int) -> TaskInstance:
        return TaskInstance(self, seed)

    def fingerprint(self) -> str:
        """Changes whenever anything that defines the task changes (used to reuse results of another run). Fields
        added after the first results were stored count only when set, so the earlier tasks keep their
        fingerprints."""
        values = {k: v for k, v in asdict(self).items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
        return hashlib.sha1(json.dumps(values, sort_keys=True, default=_jsonable).encode()).hexdigest()[:12]

    @property
    def shape(self) -> str:
        return program_shape(self.predictors, self.program)

    def describe(self) -> dict[str, Any]:
        """The task's parameters and its analytic baseline and oracle accuracies, for reports."""
        probe = self.build(0)
        described = {
            "name": self.name, "summary": self.summary, "mode": self.mode, "proposer": self.proposer,
            "predictors": self.predictors, "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test,
            "flip_rate": self.flip_rate, "redraw": self.redraw if self.mode == "diffuse" else None,
            "p_rule": self.p_rule, "baseline_accuracy": round(probe.baseline_accuracy, 4),
            "oracle_accuracy": round(probe.oracle_accuracy, 4), "fingerprint": self.fingerprint(),
            "pool": [{"kind": r.kind, "field": r.field, "effect": round(r.effect, 4), "rule": r.text}
                     for r in probe.pool],
        }
        later = {k: getattr(self, k) for k in ("program", "metric", "placement", "subgroup")
                 if getattr(self, k) != _LATER_FIELDS[k]}
        if self.program:
            later["program"] = self.shape
        return {**described, **later}


@dataclass
class TaskInstance:
    """A task on one seed: its world, data, LMs and judges. Every LM is fresh and uncached."""

    task: FamilyTask
    seed: int
    world: SimulatedWorld | DiffuseWorld = field(init=False)
    pool: list[PoolRule] = field(init=False)
    trainset: list[dspy.Example] = field(init=False)
    valset: list[dspy.Example] = field(init=False)
    testset: list[dspy.Example] = field(init=False)

    def __post_init__(self) -> None:
        t = self.task
        if t.mode == "diffuse":
            world_class = NotesDiffuseWorld if t.shape == "notes-agent" else DiffuseWorld
            self.world = world_class(t.rules, baseline=t.baseline, redraw=t.redraw, flip_rate=t.flip_rate,
                                     seed=self.seed)
            self.trainset, self.valset, self.testset = (self.world.make_examples(n)
                                                        for n in (t.n_train, t.n_val, t.n_test))
        else:
            if t.easy or t.hard or t.subgroup:
                self.world = SubgroupWorld(t.concepts, t.distractors, easy=t.easy, hard=t.hard, subgroup=t.subgroup,
                                           flip_rate=t.flip_rate, seed=self.seed)
            else:
                self.world = SimulatedWorld(t.concepts, t.distractors, flip_rate=t.flip_rate, seed=self.seed)
            self.trainset, self.valset, self.testset = (self.world.make_examples(_counts(t.shares, n))
                                                        for n in (t.n_train, t.n_val, t.n_test))
        self.pool = self._pool_with_effects()

    # -- judges ---------------------------------------------------------------------------------------------------
    @property
    def names(self) -> dict[str, str]:
        return predictor_names(self.task.predictors, self.task.program)

    def accuracy_of_stages(self, stages: list) -> float:
        """The expected metric value of a program with these stages: its expected accuracy, or under a
        partial-credit metric its expected score."""
        if isinstance(self.world, DiffuseWorld):
            accuracy = self.world.expected_accuracy(stages)
        else:
            accuracy = concept_expected_accuracy(self.world, dict(self.task.shares), stages)
        return partial_credit_expected(accuracy) if self.task.metric == "partial-credit" else accuracy

    def expected_accuracy(self, program: dspy.Module) -> float:
        """The oracle (expected) accuracy of ``program``: from the rules in its instructions, no LM call (under a
        partial-credit metric, its expected score)."""
        return self.accuracy_of_stages(program_stages(program))

    def in_force(self, program: dspy.Module) -> list[PoolRule]:
        return rules_in_force(self.pool, program_stages(program))

    @property
    def baseline_accuracy(self) -> float:
        return self.accuracy_of_stages(stages_with([], self.names))

    @property
    def oracle_accuracy(self) -> float:
        """The best expected accuracy any set of pool rules reaches."""
        return best_rule_set(self.pool, self.accuracy_of_stages, self.names)[0]

    def _pool_with_effects(self) -> list[PoolRule]:
        """The pool with each rule's effect alone on the expected metric value (as given for diffuse tasks with
        the exact metric; computed otherwise). A distractor that fixes the subgroup of a subgroup task and breaks
        something is kind ``tempting`` (in the older tasks such a rule counts as ``harmful``)."""
        t = self.task
        if t.mode == "diffuse":
            pool = list(t.rules)
            if t.metric == "exact":
                return pool
        else:
            pool = [PoolRule(c.rule, c.phrase, "helpful", c.field) for c in t.concepts]
            pool += [PoolRule(d.rule, d.phrase, "tempting" if t.subgroup in d.fixes and d.breaks else d.kind,
                              d.field) for d in t.distractors]
        base = self.accuracy_of_stages(stages_with([], self.names))
        return [PoolRule(r.text, r.phrase, r.kind, r.field, self.accuracy_of_stages(stages_with([r], self.names))
                         - base) for r in pool]

    # -- LMs and program ------------------------------------------------------------------------------------------
    @property
    def metric(self):
        return METRICS[self.task.metric]

    def program(self) -> dspy.Module:
        return make_program(self.task.predictors, self.task.program)

    def student_lm(self) -> dspy.LM:
        return self.world.student_lm(cache=False)

    def proposer_lm(self) -> dspy.LM:
        """The blind proposer every optimizer gets on blind tasks (DSPy's optimizers on every task)."""
        return proposer_lm(self.pool, seed=self.seed, p_helpful=self.task.p_rule, p_other=self.task.p_rule,
                           predictor_names=self.names, placement=self.task.placement)

    def cd_teacher_lm(self) -> dspy.LM:
        """ConceptDistillation's teacher: the diagnosing scripted teacher on ``teacher`` tasks, else the proposer."""
        if self.task.proposer == "teacher" and isinstance(self.world, SimulatedWorld):
            return self.world.teacher_lm(cache=False)
        return self.proposer_lm()


_LATER_FIELDS = {"program": "", "metric": "exact", "placement": "own", "easy": (), "hard": (), "subgroup": ""}


def _jsonable(value: Any) -> Any:
    return sorted(value) if isinstance(value, (set, frozenset)) else str(value)


def _counts(shares: tuple[tuple[str, float], ...], n: int) -> dict[str, int]:
    """``n`` examples split by ``shares`` (largest remainder, ties to the earlier category), in ``shares`` order."""
    raw = {name: share * n for name, share in shares}
    counts = {name: int(value) for name, value in raw.items()}
    order = sorted(raw, key=lambda name: -(raw[name] - counts[name]))
    for name in order[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


# -- the named tasks ------------------------------------------------------------------------------------------------
def _rule(text: str, phrase: str, kind: str, effect: float, target: str = "answer") -> PoolRule:
    return PoolRule(text, phrase, kind, target, effect)


def _same_unit(effect: float) -> PoolRule:
    return _rule("Convert every quantity to the same unit before combining them.", "same unit", "helpful", effect)


def _given_away(effect: float) -> PoolRule:
    return _rule("Subtract what was given away, eaten or sold before answering.", "subtract what was given",
                 "helpful", effect)


def _in_words(effect: float) -> PoolRule:
    return _rule("Answer with the number written out in words.", "written out in words", "harmful", effect)


NEUTRAL = [
    _rule("Read the problem carefully before answering.", "read the problem carefully", "neutral", 0.0),
    _rule("Take your time and double-check your reasoning.", "double-check your reasoning", "neutral", 0.0),
    _rule("Write the answer as a plain number without units.", "as a plain number", "neutral", 0.0),
]
TODAY_SHARES = ((PLAIN, 0.4), ("units", 0.2), ("leftover", 0.2), ("groups", 0.2))


def _today(name: str, summary: str, *, proposer: str = "teacher", flip_rate: float = 0.0) -> FamilyTask:
    return FamilyTask(name, summary, "concept", proposer, 20, 20, flip_rate=flip_rate,
                      concepts=tuple(default_concepts()), distractors=tuple(default_distractors()),
                      shares=TODAY_SHARES)


def _concepts(fields: dict[str, str]) -> tuple[Concept, ...]:
    """The default concepts, each moved to the predictor producing ``fields[name]`` (default ``answer``)."""
    return tuple(Concept(c.name, c.phrase, c.rule, c.paraphrase, fields.get(c.name, "answer"), c.template)
                 for c in default_concepts())


_TEMPTING = default_distractors()[0]  # fixes groups, breaks plain
_WORDS = default_distractors()[1]  # breaks every category
_NEUTRAL_D = default_distractors()[2:]


def _plan_answer_rules() -> tuple[PoolRule, ...]:
    """The pool of the two-predictor diffuse tasks (plan -> answer): a +20 rule that only helps in the plan, a +15
    one that only helps in the answer, a harmful plan rule (-15), a neutral plan rule and two neutral ones."""
    return (_rule("When planning, list every quantity with its unit first.", "list every quantity", "helpful", 0.20,
                  "plan"),
            _given_away(0.15),
            _rule("When planning, skip the quantities that look small.", "skip the quantities", "harmful", -0.15,
                  "plan"),
            _rule("Keep the plan to at most three short steps.", "at most three short steps", "neutral", 0.0, "plan"),
            *NEUTRAL[:2])

TASKS: list[FamilyTask] = [
    _today("today", "Today's world (tests, README costs): 3 concepts of +20 each, a tempting rule, a harmful one, "
           "2 neutral; the diagnosing teacher names the missing concept of every mistake."),
    _today("today-noisy", "Today's world with a noisy student: every new prompt flips 10% of the answers.",
           flip_rate=0.1),
    _today("today-blind", "Today's world, but every optimizer (CD too) gets the blind proposer.", proposer="blind"),
    FamilyTask("diffuse-issue", "Issue 6's diffuse task: baseline 0.40, two helpful rules of +20 (oracle 0.80), "
               "one harmful (-20), three neutral; any prompt change re-draws 30% of the answers.",
               "diffuse", "blind", 20, 20, baseline=0.40, redraw=0.3,
               rules=(_same_unit(0.20), _given_away(0.20), _in_words(-0.20), *NEUTRAL)),
    FamilyTask("diffuse-small", "Small diffuse effects (+5, +10, harmful -10) that only a 100-example valset can "
               "resolve; baseline 0.50.", "diffuse", "blind", 100, 100, baseline=0.50, redraw=0.3,
               rules=(_same_unit(0.05),
                      _rule("Round up partial groups to a whole group when packing items.", "round up partial groups",
                            "helpful", 0.10),
                      _rule("Always round the final answer up to the next whole number.", "round the final answer up",
                            "harmful", -0.10),
                      *NEUTRAL)),
    FamilyTask("diffuse-noisy", "Diffuse effects +15 and +25 under heavy noise (20% of answers flipped per prompt), "
               "40/40.", "diffuse", "blind", 40, 40, flip_rate=0.2, baseline=0.45, redraw=0.3,
               rules=(_same_unit(0.15), _given_away(0.25), _in_words(-0.15), *NEUTRAL[:2])),
    FamilyTask("diffuse-2pred", "Two predictors (plan -> answer): a +20 rule that only helps in the plan, a +15 one "
               "that only helps in the answer, a harmful plan rule (-15); flip 0.05, 40/40.",
               "diffuse", "blind", 40, 40, predictors=2, flip_rate=0.05, baseline=0.35, redraw=0.3,
               rules=_plan_answer_rules()),
    FamilyTask("concept-2pred", "Concept world with two predictors: the units concept (+25) acts only in the plan, "
               "leftover (+20) and groups (+15) only in the answer; tempting and neutral rules; teacher; 40/40.",
               "concept", "teacher", 40, 40, predictors=2,
               concepts=_concepts({"units": "plan"}), distractors=(_TEMPTING, *_NEUTRAL_D),
               shares=((PLAIN, 0.40), ("units", 0.25), ("leftover", 0.20), ("groups", 0.15))),
    FamilyTask("concept-small", "Concept world with small categories (+5, +10, +25), a rule that fixes the +5 "
               "category but breaks the +10 one, a harmful rule; flip 0.05; teacher; 100/100.",
               "concept", "teacher", 100, 100, flip_rate=0.05, concepts=_concepts({}),
               distractors=(Distractor("Always round the final answer up to the next whole number.",
                                       "round the final answer up", breaks=frozenset({"leftover"}),
                                       fixes=frozenset({"units"})),
                            Distractor("Answer with the number written out in words.", "written out in words",
                                       breaks=frozenset({ALL})), *_NEUTRAL_D),
               shares=((PLAIN, 0.60), ("units", 0.05), ("leftover", 0.10), ("groups", 0.25))),
    FamilyTask("concept-blind", "Concept world (+10, +15, +20) with the blind proposer for everyone, a tempting rule "
               "and 2 neutral; flip 0.1; 40/40.", "concept", "blind", 40, 40, flip_rate=0.1,
               concepts=_concepts({}), distractors=(_TEMPTING, *_NEUTRAL_D),
               shares=((PLAIN, 0.55), ("units", 0.10), ("leftover", 0.15), ("groups", 0.20))),
]


# -- issue 14's task kinds -------------------------------------------------------------------------------------------
def _generic(text: str, phrase: str, effect: float) -> PoolRule:
    return _rule(text, phrase, "generic", effect)


GENERIC = [
    _generic("Be concise.", "be concise", -0.01),
    _generic("Think it through one step at a time.", "one step at a time", -0.02),
    _generic("Restate the question in your own words first.", "restate the question", -0.03),
    _generic("Show all of your work.", "show all of your work", -0.01),
    _generic("Use clear and simple language.", "clear and simple language", -0.02),
    _generic("Stay focused on what the question asks.", "stay focused", -0.03),
    _generic("Avoid unnecessary assumptions.", "unnecessary assumptions", -0.02),
]
_FRACTION = "fraction"  # plain questions whose exact answer rounding up breaks (subgroup-tempting)
_HARD = "hard"  # questions beyond the student whatever its instructions (subgroup-tempting)

ISSUE14_TASKS: list[FamilyTask] = [
    FamilyTask("generic-pool", "A pool of 7 plausible, cheap generic rules ('Be concise.', 'Think it through one step "
               "at a time.', ...) costing 0.01-0.03 each, two helpful (+10 each) and a harmful one (-15); any prompt "
               "change re-draws 30% of the answers; blind proposer; 30/30; baseline 0.45.",
               "diffuse", "blind", 30, 30, baseline=0.45, redraw=0.3,
               rules=(_same_unit(0.10), _given_away(0.10), _in_words(-0.15), *GENERIC)),
    FamilyTask("partial-credit", "A partial-credit metric: a right answer scores 0.70-0.95, a wrong one 0.05-0.30 "
               "(per-example credit), never 0 or 1; diffuse effects +8 and +5 points of accuracy (+0.052, +0.033 in "
               "score), harmful -10; the oracle is the expected score; blind; 40/40.",
               "diffuse", "blind", 40, 40, baseline=0.65, redraw=0.3, metric="partial-credit",
               rules=(_same_unit(0.08), _given_away(0.05), _in_words(-0.10), *NEUTRAL[:2])),
    FamilyTask("subgroup-tempting", "Concept world with a 22% subgroup: 'Always round the final answer up' fixes it "
               "but breaks a 20% category of exact answers (net +0.02), its conditional form (round up partial "
               "groups) fixes it alone (+0.20); the diagnosing teacher proposes the tempting rule first, its "
               "conditional form right after; 29% of the questions are beyond the student; flip 0.05; 40/40.",
               "concept", "teacher", 40, 40, flip_rate=0.05,
               concepts=tuple(c for c in default_concepts() if c.name == "groups"),
               distractors=(Distractor(_TEMPTING.rule, _TEMPTING.phrase, breaks=frozenset({_FRACTION}),
                                       fixes=frozenset({"groups"})), _WORDS, *_NEUTRAL_D),
               shares=((PLAIN, 0.29), (_FRACTION, 0.20), ("groups", 0.22), (_HARD, 0.29)),
               easy=(_FRACTION,), hard=(_HARD,), subgroup="groups"),
    FamilyTask("scale-200", "200/200 examples (and 200 test), diffuse: helpful +20, +12, +8, harmful -15 and -5, "
               "three neutral; redraw 0.3; blind; baseline 0.40, oracle 0.80.",
               "diffuse", "blind", 200, 200, baseline=0.40, redraw=0.3,
               rules=(_same_unit(0.20), _given_away(0.12),
                      _rule("Round up partial groups to a whole group when packing items.", "round up partial groups",
                            "helpful", 0.08),
                      _in_words(-0.15),
                      _rule("Always round the final answer up to the next whole number.", "round the final answer up",
                            "harmful", -0.05),
                      *NEUTRAL)),
    FamilyTask("misplaced-2pred", "Two predictors (plan -> answer), a proposer that names a random one of the two for "
               "every rule it writes: a +20 rule that acts only in the plan, a +15 one only in the answer, a harmful "
               "plan rule (-15), three neutral; redraw 0.3; 40/40; baseline 0.35.",
               "diffuse", "blind", 40, 40, predictors=2, baseline=0.35, redraw=0.3, placement="random",
               rules=_plan_answer_rules()),
    FamilyTask("multi-call", "A ReAct-style agent: two rounds of think and look-up steps, then an answer step (5 LM "
               "calls per run); rules act only in the answer step (+20, +15, harmful -15, two neutral); a prompt "
               "change in any step re-draws 30% of the answers; blind; 30/30; baseline 0.40.",
               "diffuse", "blind", 30, 30, predictors=3, program="notes-agent", baseline=0.40, redraw=0.3,
               rules=(_same_unit(0.20), _given_away(0.15), _in_words(-0.15), *NEUTRAL[:2])),
]
ISSUE6_TASKS = TASKS
TASKS = [*ISSUE6_TASKS, *ISSUE14_TASKS]
TASKS_BY_NAME = {t.name: t for t in TASKS}
TASK_GROUPS = {"issue6": [t.name for t in ISSUE6_TASKS], "issue14": [t.name for t in ISSUE14_TASKS]}
