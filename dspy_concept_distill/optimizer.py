"""ConceptDistillation: a DSPy teleprompter in three phases.

1. Mistakes: the student runs the program on the trainset; its mistakes are recorded.
2. Induction: the teacher explains batches of mistakes and writes short rules, each for one predictor.
3. Verification: each rule joins the student's instructions only if it raises the valset score by ``min_gain``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from dspy.teleprompt import Teleprompter
from tqdm.auto import tqdm

from .budget import STUDENT, TEACHER, Budget, BudgetExhaustedError, Ledger
from .checkpoint import Checkpoint
from .evaluation import Evaluator, MetricAdapter, StudentLMError, example_key
from .induction import BatchReply, LeakChecker, describe_task, induce, make_batches, rules_from_replies
from .mistakes import Mistake, collect_mistakes
from .report import DistillationResult, RoundSummary
from .rules import CANDIDATE, Rule, RuleSet
from .verification import VerificationSettings, Verifier

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
    "light": Preset(rounds=1, num_batches=3, max_candidates=8, screen_size=2, confidence_z=1.5,
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
                                     or not min_gain > 0):
            raise ValueError(f"min_gain must be a number > 0, got {min_gain!r}")
        if metric_threshold is not None and not isinstance(metric_threshold, (int, float)):
            raise ValueError(f"metric_threshold must be a number, got {metric_threshold!r}")
        if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
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
        self, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None
    ) -> tuple[list[dspy.Example], list[dspy.Example]]:
        if trainset is None or len(trainset) == 0:
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
            _check_examples("valset", valset)
        if len(valset) < MIN_VALSET_SIZE:
            raise ValueError(
                f"the valset has {len(valset)} examples; at least {MIN_VALSET_SIZE} are needed to measure a rule's gain"
            )
        return list(trainset), list(valset)

    def _fingerprint(self, base: dict[str, str], trainset, valset, student: dspy.Module) -> str:
        lms = sorted({getattr(p.lm or dspy.settings.lm, "model", "?") for _, p in student.named_predictors()})
        payload = {
            "instructions": base, "train": [example_key(e) for e in trainset], "val": [example_key(e) for e in valset],
            "student": lms, "teacher": getattr(self.teacher_lm, "model", "?"),
            "metric": getattr(self.metric, "__qualname__", repr(self.metric)),
            "params": {k: v for k, v in self.get_params().items()
                       if isinstance(v, (int, float, str, type(None))) and k != "checkpoint_dir"},
        }
        return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

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
        names = self._check_program(student)
        trainset, valset = self._check_data(trainset, valset)
        return self._run(student, names, trainset, valset, seed_rules=None)

    def verify(self, student: dspy.Module, rules: RuleSet, *, valset: list[dspy.Example]) -> dspy.Module:
        """Re-check an existing rule set (e.g. from another student, loaded with ``RuleSet.from_json``) for
        ``student``: no teacher calls; each rule is raced on the valset on top of those kept before it."""
        names = self._check_program(student)
        if not isinstance(rules, RuleSet):
            raise TypeError(f"rules must be a RuleSet, got {type(rules).__name__}")
        rules.check_program(student)
        _check_examples("valset", valset)
        if len(valset) < MIN_VALSET_SIZE:
            raise ValueError(
                f"the valset has {len(valset)} examples; at least {MIN_VALSET_SIZE} are needed to measure a rule's gain"
            )
        seeds = [Rule(text=r.text, predictor=r.predictor) for r in rules]
        return self._run(student, names, [], list(valset), seed_rules=seeds)

    def _run(
        self,
        student: dspy.Module,
        names: list[str],
        trainset: list[dspy.Example],
        valset: list[dspy.Example],
        seed_rules: list[Rule] | None,
    ) -> dspy.Module:
        rng = random.Random(self.seed)
        program = student.deepcopy()
        base_instructions = {name: p.signature.instructions for name, p in program.named_predictors()}
        ledger = Ledger()
        max_student, max_teacher = self._budgets(len(trainset), len(valset), len(names))
        budget = Budget(ledger, max_student, max_teacher)
        evaluator = Evaluator(program, base_instructions, MetricAdapter(self.metric), budget, self.num_threads)
        checkpoint = Checkpoint(self.checkpoint_dir, self._fingerprint(base_instructions, trainset, valset, student))
        evaluator.cache, replay = checkpoint.load()
        rounds = 0 if seed_rules is not None else self._setting("rounds")
        self._log_projection(len(trainset), len(valset), len(names), rounds, max_student, max_teacher)

        run = _Run(rules=[], mistakes=[], replies=[], summaries=[])
        current = RuleSet()
        threshold = self.metric_threshold
        verifier_settings = None

        def save() -> None:
            checkpoint.save(evaluator.cache, run.replies, {"rules": [r.to_dict() for r in run.rules]})

        baseline_scores: list[float] | None = None
        val_scores: list[float] | None = None
        try:
            if seed_rules is not None:
                baseline_scores = val_scores = self._scores(evaluator, current, valset)
                run.rules = seed_rules
                verifier_settings = self._verification_settings(_max_score(evaluator), len(valset), screen=False)
                verifier = Verifier(evaluator, valset, trainset, verifier_settings, rng, progress=tqdm)
                current, val_scores, run.stopped = verifier.run(current, seed_rules, {})
            for round_index in range(rounds):
                mistakes, train_outcomes, threshold = collect_mistakes(
                    evaluator, current, trainset, threshold=threshold, round_index=round_index
                )
                run.mistakes += mistakes
                save()
                if baseline_scores is None:
                    baseline_scores = val_scores = self._scores(evaluator, current, valset)
                train_score = sum(o.score for o in train_outcomes) / len(train_outcomes)
                logger.info("round %d: student scores %.3f on the trainset with %d mistakes",
                            round_index + 1, train_score, len(mistakes))
                if not mistakes:
                    logger.info("round %d: no mistakes left to learn from", round_index + 1)
                    break
                candidates = self._induce(program, base_instructions, names, trainset, current, mistakes, run,
                                          budget, rng, round_index, replay, save)
                pending = self._limit_candidates([c for c in candidates if c.status == CANDIDATE])
                verifier_settings = self._verification_settings(_max_score(evaluator), len(valset), screen=True)
                verifier = Verifier(evaluator, valset, trainset, verifier_settings, rng, progress=tqdm)
                before = _mean(val_scores)
                current, scores, run.stopped = verifier.run(current, pending, {m.id: m for m in mistakes})
                val_scores = scores if scores is not None else val_scores
                save()
                accepted = sum(c.status == "accepted" for c in candidates)
                run.summaries.append(RoundSummary(round_index + 1, train_score, len(mistakes), len(pending), accepted,
                                                  before, _mean(val_scores)))
                logger.info("round %d: %d of %d candidate rules accepted; valset score %s -> %s", round_index + 1,
                            accepted, len(pending), _fmt(before), _fmt(_mean(val_scores)))
                if run.stopped or accepted == 0:
                    break
        except (BudgetExhaustedError, StudentLMError) as exc:
            run.stopped = str(exc)
            logger.warning("stopping early, keeping the rules verified so far: %s", exc)
        finally:
            save()

        min_gain = verifier_settings.min_gain if verifier_settings else (self.min_gain or 0.0)
        return self._finish(student, current, base_instructions, evaluator, valset, run, ledger,
                            baseline_scores, val_scores, len(trainset), min_gain)

    # -- phases ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _scores(evaluator: Evaluator, ruleset: RuleSet, valset: list[dspy.Example]) -> list[float]:
        outcomes = evaluator.run([(ruleset, ex) for ex in valset], phase="verification", desc="Baseline on valset")
        return [o.score for o in outcomes]

    def _induce(self, program, base_instructions, names, trainset, current, mistakes, run, budget, rng,
                round_index, replay, save) -> list[Rule]:
        batches = make_batches(mistakes, self.mistakes_per_batch, self._setting("num_batches"), rng)
        bar = tqdm(total=len(batches), desc=f"Round {round_index + 1}: teacher writes rules")

        def on_reply(reply: BatchReply) -> None:
            run.replies.append(reply)
            save()
            bar.update(1)
            bar.set_postfix(rules=sum(len(r.rules) for r in run.replies if r.round == round_index))

        try:
            replies = induce(
                self.teacher_lm, batches=batches, task=describe_task(program, base_instructions),
                rules_in_force=list(current), max_rules_per_batch=self.max_rules_per_batch,
                retries=self.teacher_retries, budget=budget, round_index=round_index, rng=rng, on_reply=on_reply,
                replay={b: r for (rnd, b), r in replay.items() if rnd == round_index},
            )
        except BudgetExhaustedError as exc:
            logger.warning("teacher budget used up after %d batches: %s", len(run.replies), exc)
            replies = [r for r in run.replies if r.round == round_index]
        finally:
            bar.close()
        candidates = rules_from_replies(
            replies, batches[: len(replies)], predictor_names=names, leak_checker=LeakChecker(trainset),
            known_rules=run.rules, round_index=round_index,
        )
        run.rules += candidates
        return candidates

    def _limit_candidates(self, pending: list[Rule]) -> list[Rule]:
        limit = self._setting("max_candidates")
        if len(pending) <= limit:
            return pending
        ranked = sorted(pending, key=lambda r: -len(r.source_mistakes))  # stable: teacher order breaks ties
        for rule in ranked[limit:]:
            rule.reject(f"not verified: more than max_candidates={limit} candidates this round, and less support")
        keep = {r.id for r in ranked[:limit]}
        return [r for r in pending if r.id in keep]

    def _verification_settings(self, max_score: float, n_val: int, *, screen: bool) -> VerificationSettings:
        min_gain = self.min_gain if self.min_gain is not None else max_score / n_val
        return VerificationSettings(
            min_gain=min_gain, confidence_z=self._preset().confidence_z,
            screen_size=self._setting("screen_size") if screen else 0, max_score=max_score,
        )

    def _log_projection(self, n_train, n_val, n_pred, rounds, max_student, max_teacher) -> None:
        preset = self._preset()
        per_round = n_train + self._setting("max_candidates") * (self._setting("screen_size") + n_val)
        projected = (n_val + rounds * per_round) * n_pred
        logger.info(
            "projected LM calls: student at most %d (budget %d), teacher at most %d (budget %d); racing and "
            "screening usually stop candidates well before that (auto=%s)",
            projected, max_student, self._teacher_calls_bound(rounds),
            max_teacher, self.auto or f"None (light defaults, z={preset.confidence_z})",
        )

    # -- result ---------------------------------------------------------------------------------------------------
    def _finish(self, student, current, base_instructions, evaluator, valset, run, ledger, baseline_scores,
                val_scores, n_train, min_gain) -> dspy.Module:
        baseline = _mean(baseline_scores)
        final = _mean(val_scores)
        if final is None or baseline is None or final < baseline:
            # Never hand back something worse than (or not measured against) what the caller gave us.
            if len(current):
                logger.warning("returning the original instructions: the rule set could not be shown to help")
            current, final = RuleSet(), baseline
        optimized = current.apply(student, base_instructions)
        optimized._compiled = True
        chain = [RuleSet(list(current)[:k]) for k in range(len(current) + 1)]
        candidates = []
        for ruleset in chain:
            scores = evaluator.scores(ruleset, valset)
            if all(s is not None for s in scores):
                program = optimized if ruleset == current else ruleset.apply(student, base_instructions)
                candidates.append({"score": _mean(scores), "program": program, "rules": ruleset})
        candidates.sort(key=lambda c: (-c["score"], len(c["rules"])))
        optimized.candidate_programs = candidates
        optimized.distillation = DistillationResult(
            baseline_score=baseline, final_score=final, ruleset=current, rules=run.rules, mistakes=run.mistakes,
            replies=run.replies, usage=ledger, rounds=run.summaries, stopped=run.stopped, trainset_size=n_train,
            valset_size=len(valset), min_gain=min_gain,
        )
        logger.info("concept distillation done: valset score %s -> %s with %d rule(s); %d student and %d teacher "
                    "calls", _fmt(baseline), _fmt(final), len(current), ledger.calls(STUDENT), ledger.calls(TEACHER))
        return optimized


@dataclass
class _Run:
    rules: list[Rule]
    mistakes: list[Mistake]
    replies: list[BatchReply]
    summaries: list[RoundSummary]
    stopped: str | None = None


def _max_score(evaluator: Evaluator) -> float:
    """The metric's maximum per example: 1.0, or the largest score seen if a metric goes higher."""
    return max([1.0, *(o.score for o in evaluator.cache.values())])


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


def _check_examples(name: str, examples: Sequence[dspy.Example]) -> None:
    for i, ex in enumerate(examples):
        if not isinstance(ex, dspy.Example):
            raise TypeError(f"{name}[{i}] is a {type(ex).__name__}, not a dspy.Example")
        if getattr(ex, "_input_keys", None) is None:
            raise ValueError(
                f"{name}[{i}] has no input fields marked: build examples with "
                "dspy.Example(...).with_inputs('question', ...)"
            )
