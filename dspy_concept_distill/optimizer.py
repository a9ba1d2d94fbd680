"""ConceptDistillation: a DSPy teleprompter in three phases.

1. Mistakes: the student runs the program on the trainset; its mistakes are recorded.
2. Induction: the teacher explains batches of mistakes and writes short rules, each for one predictor.
3. Verification: each rule joins the student's instructions only if it raises the valset score by ``min_gain``.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from dspy.teleprompt import Teleprompter
from tqdm.auto import tqdm

from .budget import STUDENT, TEACHER
from .checkpoint import fingerprint
from .evaluation import STOPPING_ERRORS, MetricAdapter
from .guards import LeakChecker
from .induction import (
    BatchReply,
    TeacherBrief,
    describe_rules,
    describe_task,
    induce,
    make_batches,
    rules_from_replies,
)
from .mistakes import Mistake, collect_mistakes
from .report import DistillationResult, RoundSummary
from .rules import ACCEPTED, CANDIDATE, Rule, RuleSet
from .state import CompileState, RunSettings, open_state
from .verification import MIN_FIRST_CHUNK, VerificationSettings, Verifier

logger = logging.getLogger(__name__)

MIN_VALSET_SIZE = 5
AutoMode = Literal["light", "medium", "heavy"]


@dataclass(frozen=True)
class Preset:
    rounds: int
    num_batches: int
    max_candidates: int
    screen_size: int
    confidence_z: float
    train_passes: float  # student budget: runs per training example ...
    val_passes: float  # ... plus runs per validation example


PRESETS: dict[str, Preset] = {
    "light": Preset(rounds=1, num_batches=3, max_candidates=8, screen_size=0, confidence_z=1.5,
                    train_passes=1, val_passes=6),
    "medium": Preset(rounds=2, num_batches=5, max_candidates=16, screen_size=3, confidence_z=2.0,
                     train_passes=2, val_passes=16),
    "heavy": Preset(rounds=3, num_batches=8, max_candidates=32, screen_size=0, confidence_z=2.5,
                    train_passes=3, val_passes=48),
}


class ConceptDistillation(Teleprompter):
    """Optimize a DSPy program's instructions for a cheap student LM with rules a strong teacher LM distils
    from the student's own mistakes; each rule is kept only if it raises the student's valset score.

    Args:
        metric: ``metric(example, prediction)``, ``(example, prediction, trace)`` or GEPA-style
            ``(gold, pred, trace, pred_name, pred_trace)``; returns a number, a bool, or
            ``dspy.Prediction(score=..., feedback=...)`` (the feedback is shown to the teacher).
        teacher_lm: the strong LM that explains mistakes and writes rules.
        auto: ``"light"`` (default), ``"medium"`` or ``"heavy"``: presets for the settings left as ``None``.
            ``None`` uses the light preset's values for anything not given.
        rounds: how many times phases 1-3 repeat, each on top of the rules accepted so far.
        num_batches: teacher calls per round, each on a different batch of mistakes.
        mistakes_per_batch: mistakes the teacher sees per call.
        max_rules_per_batch: rules the teacher may propose per call.
        max_candidates: candidate rules verified per round (after merging duplicates); the best supported first.
        screen_size: before using the valset, each candidate must fix at least one of its first ``screen_size``
            source mistakes on the trainset (0 turns the screen off).
        min_gain: smallest rise of the mean valset score that admits a rule (default: one example's worth,
            ``max_score / len(valset)``).
        metric_threshold: a training example is a mistake when it scores below this (default: below the metric's
            maximum, 1.0 or the largest score seen).
        max_student_calls / max_teacher_calls: hard limits on LM calls (default: from the preset; student calls
            scale with data size and the number of predictors).
        num_threads: parallel program runs (default: ``dspy.settings.num_threads``).
        seed: makes train/val splits, batching, racing order and teacher rollouts repeatable.
        val_fraction: share of the trainset held out for validation when ``compile`` gets no valset.
        teacher_retries: extra attempts, with a fresh rollout, when a teacher reply does not parse.
        checkpoint_dir: where run state is saved after each phase; a compile with the same setup resumes from it.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        teacher_lm: dspy.BaseLM,
        *,
        auto: AutoMode | None = "light",
        rounds: int | None = None,
        num_batches: int | None = None,
        mistakes_per_batch: int = 5,
        max_rules_per_batch: int = 4,
        max_candidates: int | None = None,
        screen_size: int | None = None,
        min_gain: float | None = None,
        metric_threshold: float | None = None,
        max_student_calls: int | None = None,
        max_teacher_calls: int | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.5,
        teacher_retries: int = 1,
        checkpoint_dir: str | None = None,
    ) -> None:
        super().__init__()
        if metric is None:
            raise ValueError("ConceptDistillation needs a metric: metric(example, prediction) -> score")
        MetricAdapter(metric)  # raises a clear TypeError for non-callables and unusable signatures
        if teacher_lm is None:
            raise ValueError("ConceptDistillation needs a teacher_lm, e.g. teacher_lm=dspy.LM('openai/gpt-4o')")
        if not isinstance(teacher_lm, dspy.BaseLM):
            raise TypeError(f"teacher_lm must be a dspy.LM, got {type(teacher_lm).__name__}")
        if auto is not None and auto not in PRESETS:
            raise ValueError(f"auto must be one of {sorted(PRESETS)} or None, got {auto!r}")
        for name, value in {"rounds": rounds, "num_batches": num_batches, "mistakes_per_batch": mistakes_per_batch,
                            "max_rules_per_batch": max_rules_per_batch, "max_candidates": max_candidates}.items():
            _check_int(name, value, minimum=1)
        for name, value in {"screen_size": screen_size, "teacher_retries": teacher_retries,
                            "max_student_calls": max_student_calls, "max_teacher_calls": max_teacher_calls}.items():
            _check_int(name, value, minimum=0)
        _check_int("num_threads", num_threads, minimum=1)
        _check_int("seed", seed, minimum=None)
        if min_gain is not None and (isinstance(min_gain, bool) or not isinstance(min_gain, (int, float))
                                     or not math.isfinite(min_gain) or not min_gain > 0):
            raise ValueError(f"min_gain must be a number > 0, got {min_gain!r}")
        if metric_threshold is not None and (isinstance(metric_threshold, bool)
                                             or not isinstance(metric_threshold, (int, float))
                                             or not math.isfinite(metric_threshold)):
            raise ValueError(f"metric_threshold must be a finite number, got {metric_threshold!r}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
        self.metric = metric
        self.teacher_lm = teacher_lm
        self.auto = auto
        self.rounds = rounds
        self.num_batches = num_batches
        self.mistakes_per_batch = mistakes_per_batch
        self.max_rules_per_batch = max_rules_per_batch
        self.max_candidates = max_candidates
        self.screen_size = screen_size
        self.min_gain = min_gain
        self.metric_threshold = metric_threshold
        self.max_student_calls = max_student_calls
        self.max_teacher_calls = max_teacher_calls
        self.num_threads = num_threads
        self.seed = seed
        self.val_fraction = val_fraction
        self.teacher_retries = teacher_retries
        self.checkpoint_dir = checkpoint_dir

    # -- settings -------------------------------------------------------------------------------------------------
    def _preset(self) -> Preset:
        return PRESETS[self.auto or "light"]

    def _setting(self, name: str) -> Any:
        value = getattr(self, name)
        return getattr(self._preset(), name) if value is None else value

    def _budgets(self, n_train: int, n_val: int, n_predictors: int) -> tuple[int, int]:
        preset = self._preset()
        student = self.max_student_calls
        if student is None:
            student = math.ceil((preset.train_passes * n_train + preset.val_passes * n_val) * n_predictors)
        teacher = self.max_teacher_calls
        if teacher is None:
            teacher = self._teacher_calls_bound(self._setting("rounds"))
        return student, teacher

    def _teacher_calls_bound(self, rounds: int) -> int:
        """Most teacher calls ``rounds`` rounds can make: each batch's attempts, each with room for DSPy's
        JSON-adapter fallback call."""
        return 2 * rounds * self._setting("num_batches") * (self.teacher_retries + 1)

    # -- validation -----------------------------------------------------------------------------------------------
    def _check_program(self, student: dspy.Module) -> list[str]:
        if not isinstance(student, dspy.Module):
            raise TypeError(f"compile expects a dspy.Module as the student, got {type(student).__name__}")
        predictors = student.named_predictors()
        if not predictors:
            raise ValueError("the program has no predictors (dspy.Predict, dspy.ChainOfThought, ...) to optimize")
        missing_lm = [name for name, p in predictors if p.lm is None and dspy.settings.lm is None]
        if missing_lm:
            raise ValueError(
                f"no student LM for predictors {missing_lm}: call dspy.configure(lm=...) or set predictor.lm"
            )
        return [name for name, _ in predictors]

    def _check_data(
        self, trainset: Iterable[dspy.Example], valset: Iterable[dspy.Example] | None
    ) -> tuple[list[dspy.Example], list[dspy.Example]]:
        trainset = _materialize("trainset", trainset)
        if not trainset:
            raise ValueError("trainset is empty: Concept Distillation learns from the student's mistakes on it")
        _check_examples("trainset", trainset)
        if valset is None:
            n_val = max(MIN_VALSET_SIZE, round(len(trainset) * self.val_fraction))
            if len(trainset) - n_val < 1:
                raise ValueError(
                    f"the trainset has {len(trainset)} examples, too few to hold out a valset of {MIN_VALSET_SIZE} "
                    "or more to measure a rule's gain; pass valset= or more training examples"
                )
            shuffled = list(trainset)
            random.Random(self.seed).shuffle(shuffled)
            valset, trainset = shuffled[:n_val], shuffled[n_val:]
            logger.info("no valset given: split the trainset (seed=%d) into %d training and %d validation examples",
                        self.seed, len(trainset), len(valset))
        else:
            valset = _materialize("valset", valset)
            _check_examples("valset", valset)
        _check_valset_size(valset)
        return trainset, valset

    def _run_settings(self, *, rounds: int | None = None, num_threads: int | None = None) -> RunSettings:
        threads = num_threads or self.num_threads or dspy.settings.num_threads or 1
        return RunSettings(
            rounds=self._setting("rounds") if rounds is None else rounds, num_batches=self._setting("num_batches"),
            mistakes_per_batch=self.mistakes_per_batch, max_rules_per_batch=self.max_rules_per_batch,
            max_candidates=self._setting("max_candidates"), screen_size=self._setting("screen_size"),
            confidence_z=self._preset().confidence_z, min_gain=self.min_gain, metric_threshold=self.metric_threshold,
            teacher_retries=self.teacher_retries, num_threads=threads, seed=self.seed,
        )

    def _open(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], *,
              mode: str, settings: RunSettings):
        n_predictors = len(student.named_predictors())
        limits = self._budgets(len(trainset), len(valset), n_predictors)
        base = {n: p.signature.instructions for n, p in student.named_predictors()}
        params = {k: v for k, v in self.get_params().items() if k != "checkpoint_dir"}
        fp = fingerprint(student, base, trainset, valset, self.metric, self.teacher_lm, {**params, "mode": mode})
        self._log_projection(len(trainset), len(valset), n_predictors, settings.rounds, *limits)
        teacher = self.teacher_lm if mode == "compile" else None
        return open_state(student, trainset=trainset, valset=valset, metric=self.metric, teacher_lm=teacher,
                          settings=settings, limits=limits, checkpoint=(self.checkpoint_dir, f"{mode}_state", fp))

    # -- compile --------------------------------------------------------------------------------------------------
    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        teacher: dspy.Module | None = None,
        valset: list[dspy.Example] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        """Return an optimized copy of ``student``; ``student`` itself is never changed.

        The copy carries ``distillation`` (a ``DistillationResult``) and ``candidate_programs`` (dicts with
        ``score``, ``program`` and ``rules``, best first).
        """
        if kwargs:
            raise TypeError(f"compile() got unexpected keyword arguments {sorted(kwargs)}")
        if teacher is not None:
            logger.warning("compile(teacher=...) is not used: the teacher is the teacher_lm given to the constructor")
        self._check_program(student)
        trainset, valset = self._check_data(trainset, valset)
        with self._open(student, trainset, valset, mode="compile", settings=self._run_settings()) as state:
            try:
                for round_index in range(state.settings.rounds):
                    if not self._round(state, round_index):
                        break
            except STOPPING_ERRORS as exc:
                state.stop_with(exc)
            return self._finish(state, student)

    def verify(self, student: dspy.Module, rules: RuleSet, *, valset: list[dspy.Example]) -> dspy.Module:
        """Re-check an existing rule set (e.g. from another student, loaded with ``RuleSet.from_json``) for
        ``student``: no teacher calls; each rule is raced on the valset on top of those kept before it. Its
        checkpoint (``verify_state.jsonl``) is kept apart from the compile's."""
        self._check_program(student)
        if not isinstance(rules, RuleSet):
            raise TypeError(f"rules must be a RuleSet, got {type(rules).__name__}")
        if not len(rules):
            raise ValueError("the rule set is empty: there is nothing to verify")
        rules.check_program(student)
        valset = _materialize("valset", valset)
        _check_examples("valset", valset)
        _check_valset_size(valset)
        with self._open(student, [], valset, mode="verify", settings=self._run_settings(rounds=0)) as state:
            seeds = [Rule(text=r.text, predictor=r.predictor) for r in rules]
            state.rules = seeds
            try:
                state.baseline_scores = state.val_scores = self._scores(state)
                result = self._verifier(state, screen=False).run(state.current, seeds, {})
                state.current, state.val_scores = result.ruleset, result.scores or state.val_scores
                state.stopped = result.stopped
            except STOPPING_ERRORS as exc:
                state.stop_with(exc)
            return self._finish(state, student)

    # -- one round: the three phases ------------------------------------------------------------------------------
    def _round(self, state: CompileState, round_index: int) -> bool:
        """Mistakes, induction, verification; returns whether another round can help."""
        number = round_index + 1
        mistakes, outcomes, state.threshold = collect_mistakes(
            state.evaluator, state.current, state.trainset, threshold=state.settings.metric_threshold,
            round_index=round_index)
        state.mistakes += mistakes
        if state.baseline_scores is None:
            state.baseline_scores = state.val_scores = self._scores(state)
        train_score = sum(o.score for o in outcomes) / len(outcomes)
        logger.info("round %d: student scores %.3f on the trainset with %d mistakes", number, train_score,
                    len(mistakes))
        if not mistakes:
            logger.info("round %d: no mistakes left to learn from", number)
            return False
        candidates = self._induce(state, round_index, mistakes)
        pending = limit_candidates([c for c in candidates if c.status == CANDIDATE], state.settings.max_candidates)
        before = _mean(state.val_scores)
        result = self._verifier(state, screen=True).run(state.current, pending, {m.id: m for m in mistakes})
        state.current, state.val_scores = result.ruleset, result.scores or state.val_scores
        state.stopped = state.stopped or result.stopped
        accepted = sum(c.status == ACCEPTED for c in candidates)
        state.summaries.append(RoundSummary(number, train_score, len(mistakes), len(pending), accepted, before,
                                            _mean(state.val_scores)))
        logger.info("round %d: %d of %d candidate rules accepted; valset score %s -> %s", number, accepted,
                    len(pending), _fmt(before), _fmt(_mean(state.val_scores)))
        return not state.stopped and accepted > 0

    @staticmethod
    def _scores(state: CompileState) -> list[float]:
        outcomes = state.evaluator.run([(state.current, ex) for ex in state.valset], phase="verification",
                                       desc="Baseline on valset")
        return [o.score for o in outcomes]

    def _induce(self, state: CompileState, round_index: int, mistakes: list[Mistake]) -> list[Rule]:
        s = state.settings
        batches = make_batches(mistakes, s.mistakes_per_batch, s.num_batches, state.rng)
        brief = TeacherBrief(task=describe_task(state.program, state.base_instructions),
                             rules_in_force=describe_rules(list(state.current)), max_rules=s.max_rules_per_batch,
                             retries=s.teacher_retries, round_index=round_index)
        replay = {b: r for (rnd, b), r in state.resumed.replies.items() if rnd == round_index}
        with tqdm(total=len(batches), desc=f"Round {round_index + 1}: teacher writes rules", leave=False) as bar:
            def on_reply(reply: BatchReply) -> None:
                bar.update(1)
                if reply.batch not in replay:
                    state.journal.reply(reply)

            replies = induce(state.teacher_lm, brief, batches, executor=state.executor,
                             seed=state.rng.randrange(1 << 30), on_reply=on_reply, replay=replay)
        state.replies += replies
        usable = [r for r in replies if r.error is None]
        if state.budget.exhausted(TEACHER):
            logger.warning("teacher budget used up after %d of %d batches", len(replies), len(batches))
        if not usable:
            errors = "; ".join(sorted({r.error for r in replies if r.error}))[:300] or "no batch could be asked"
            state.stopped = state.stopped or f"no usable teacher reply in round {round_index + 1} ({errors})"
            logger.warning("%s", state.stopped)
        candidates = rules_from_replies(
            usable, [batches[r.batch] for r in usable], predictor_names=state.names,
            leak_checker=LeakChecker(state.trainset), known_rules=state.rules, round_index=round_index,
        )
        state.rules += candidates
        return candidates

    def _verifier(self, state: CompileState, *, screen: bool) -> Verifier:
        s = state.settings
        settings = VerificationSettings(
            min_gain=state.min_gain, confidence_z=s.confidence_z, screen_size=s.screen_size if screen else 0,
            max_score=state.max_score, lookahead=max(0, (s.num_threads - MIN_FIRST_CHUNK) // MIN_FIRST_CHUNK),
        )
        return Verifier(state.evaluator, state.valset, state.trainset, settings, state.rng, progress=tqdm)

    def _log_projection(self, n_train, n_val, n_pred, rounds, max_student, max_teacher) -> None:
        preset = self._preset()
        per_round = n_train + self._setting("max_candidates") * (self._setting("screen_size") + n_val)
        projected = (n_val + rounds * per_round) * n_pred
        logger.info(
            "student LM calls: at most %d (the budget), %d if no candidate were stopped early; teacher LM calls: at "
            "most %d (budget %s); auto=%s", max_student if max_student is not None else projected,
            projected, self._teacher_calls_bound(rounds), max_teacher,
            self.auto or f"None (light defaults, z={preset.confidence_z})",
        )

    # -- result ---------------------------------------------------------------------------------------------------
    def _finish(self, state: CompileState, student: dspy.Module) -> dspy.Module:
        baseline, final = _mean(state.baseline_scores), _mean(state.val_scores)
        current = state.current
        if final is None or baseline is None or final < baseline:
            # Never hand back something worse than (or not measured against) what the caller gave us.
            if len(current):
                logger.warning("returning the original instructions: the rule set could not be shown to help")
            current, final = RuleSet(), baseline
        optimized = current.apply(student, state.base_instructions)
        optimized._compiled = True
        optimized.candidate_programs = self._candidates(state, student, current, optimized)
        optimized.distillation = DistillationResult(
            baseline_score=baseline, final_score=final, ruleset=current, rules=state.rules,
            mistakes=state.mistakes, replies=state.replies, usage=state.ledger, rounds=state.summaries,
            stopped=state.stopped, trainset_size=len(state.trainset), valset_size=len(state.valset),
            min_gain=state.min_gain if state.valset else 0.0,
        )
        logger.info("concept distillation done: valset score %s -> %s with %d rule(s); %d student and %d teacher "
                    "calls (%d student cache hits)", _fmt(baseline), _fmt(final), len(current),
                    state.ledger.calls(STUDENT), state.ledger.calls(TEACHER), state.ledger.cache_hits(STUDENT))
        return optimized

    @staticmethod
    def _candidates(state: CompileState, student: dspy.Module, current: RuleSet,
                    optimized: dspy.Module) -> list[dict[str, Any]]:
        """Every rule set on the accepted path that was scored on the whole valset, best first."""
        out = []
        for k in range(len(current) + 1):
            ruleset = RuleSet(list(current)[:k])
            scores = state.evaluator.scores(ruleset, state.valset)
            if all(s is not None for s in scores):
                program = optimized if ruleset == current else ruleset.apply(student, state.base_instructions)
                out.append({"score": _mean(scores), "program": program, "rules": ruleset})
        out.sort(key=lambda c: (-c["score"], len(c["rules"])))
        return out


def limit_candidates(pending: list[Rule], limit: int) -> list[Rule]:
    """At most ``limit`` candidates, the best supported (most source mistakes) first; the rest are rejected."""
    if len(pending) <= limit:
        return pending
    ranked = sorted(pending, key=lambda r: -len(r.source_mistakes))  # stable: teacher order breaks ties
    for rule in ranked[limit:]:
        rule.reject(f"not verified: more than max_candidates={limit} candidates this round, and less support")
    keep = {r.id for r in ranked[:limit]}
    return [r for r in pending if r.id in keep]


def _mean(scores: Sequence[float] | None) -> float | None:
    return None if not scores else sum(scores) / len(scores)


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.3f}"


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _materialize(name: str, examples: Any) -> list[dspy.Example]:
    """A list from any iterable of examples (a generator included); a clear error for anything else."""
    if isinstance(examples, (str, bytes, dict, dspy.Example)) or not isinstance(examples, Iterable):
        raise TypeError(f"{name} must be a list (or other iterable) of dspy.Example, got {type(examples).__name__}")
    return list(examples)


def _check_valset_size(valset: Sequence[dspy.Example]) -> None:
    if len(valset) < MIN_VALSET_SIZE:
        raise ValueError(
            f"the valset has {len(valset)} examples; at least {MIN_VALSET_SIZE} are needed to measure a rule's gain"
        )


def _check_examples(name: str, examples: Sequence[dspy.Example]) -> None:
    for i, ex in enumerate(examples):
        if not isinstance(ex, dspy.Example):
            raise TypeError(f"{name}[{i}] is a {type(ex).__name__}, not a dspy.Example")
        if getattr(ex, "_input_keys", None) is None:
            raise ValueError(
                f"{name}[{i}] has no input fields marked: build examples with "
                "dspy.Example(...).with_inputs('question', ...)"
            )
