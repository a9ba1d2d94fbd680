"""ConceptDistillation: a DSPy teleprompter in three phases.

1. Mistakes: the student runs the program on the trainset; its mistakes are recorded.
2. Induction: the teacher explains batches of mistakes and writes short rules, each for one predictor.
3. Verification: each rule joins the student's instructions only if its valset gain is shown to be real.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import dspy
from dspy.teleprompt import Teleprompter

from .errors import DistillationError, LMUnavailableError
from .finish import evidence_failure, finish, stop_summary
from .foreign import translate
from .persistence.fingerprint import fingerprint
from .phases.ablation import ablate, ablation_cost
from .phases.induction import TeacherBrief, describe_rules, describe_task, induce, make_batches, program_fields
from .phases.mistakes import collect_mistakes, fail_if_all_failed
from .phases.proposals import near_misses_to_retry, rules_from_replies
from .phases.rule_checks import LeakChecker
from .phases.statistics import SelectionSettings, held_back_size
from .phases.verification import VerificationResult, Verifier, limit_candidates, returned_rules
from .records import BatchReply, CostForecast, Limits, Mistake, MistakesFound, Outcome, RoundSummary, mean_score
from .reporting.mlflow import log_to_mlflow
from .rules import Rule, RuleSet, RuleStatus, RuleVerdict, record_verdicts
from .runtime.account import SPECULATION_SHARE
from .runtime.evaluator import STOPPING_ERRORS
from .runtime.forecast import call_bounds, calls_per_run, project, refine
from .runtime.logs import one_line
from .runtime.metering import Role
from .runtime.progress import progress, verbose_logging
from .settings import (
    PRESETS,
    Preset,
    RunSettings,
    check_examples,
    check_program,
    check_run_budget,
    check_valset_size,
    materialize,
    split_data,
    validate_params,
)
from .state import CompileState, open_state
from .text import clip_text, fmt_score

logger = logging.getLogger(__name__)

MIN_TRAIN_SAMPLE = 40  # trainset examples the student runs on, at least (all of a smaller trainset)
TRAIN_SAMPLE_SLOTS = 1.5  # ... and 1.5 times the mistakes the teacher's batches can show

AutoMode = Literal["light", "medium", "heavy"]
OnFailure = Literal["raise", "return"]


class ConceptDistillation(Teleprompter):
    """Optimize a DSPy program's instructions for a cheap student LM with rules a strong teacher LM distils
    from the student's own mistakes; each rule is kept only if it raises the student's valset score.

    Args:
        metric: ``metric(example, prediction)``, ``(example, prediction, trace)`` or GEPA-style
            ``(gold, pred, trace, pred_name, pred_trace)``; returns a number, a bool, or
            ``dspy.Prediction(score=..., feedback=...)`` (the feedback is shown to the teacher).
        teacher_lm: the strong LM that explains mistakes and writes rules (required: no fallback to the configured
            LM, which is usually the student).
        auto: ``"light"`` (default), ``"medium"`` or ``"heavy"``: presets for the settings left as ``None``.
            ``None`` uses the light preset's values for anything not given.
        rounds: how many times phases 1-3 repeat, each on top of the rules accepted so far.
        num_batches: teacher calls per round, each on a different batch of mistakes.
        mistakes_per_batch: mistakes the teacher sees per call.
        max_rules_per_batch: rules the teacher may propose per call.
        max_candidates: candidate rules verified per round (after merging duplicates), in the teacher's order of
            preference, more supported first among equals; the rest are rejected as not verified.
        screen_size: before using the valset, each candidate is run on its first ``screen_size`` source mistakes on
            the trainset, and candidates that fix more of them are raced first (0 turns the screen off).
        min_gain: the rise of the mean valset score a rule must be shown to exceed: it is accepted when the lower
            confidence bound of its gain clears this (default 0: any gain shown to be real, in units of the
            metric's own noise).
        metric_threshold: a training example is a mistake when it scores below this (default: below the metric's
            maximum, 1.0 or the largest score seen).
        max_student_calls / max_teacher_calls: hard limits on LM calls (requests), whatever path a program takes to
            its LM. Without ``max_student_calls``, the student budget is the preset's, in program runs (it scales
            with the data size), converted to LM calls with the calls per run measured on the trainset.
        max_metric_calls: GEPA's name for the student budget, in program runs (converted the same way).
        num_threads: parallel program runs (default: ``dspy.settings.num_threads``).
        seed: makes train/val splits, batching, racing order and teacher rollouts repeatable.
        val_fraction: share of the trainset held out for validation when ``compile`` gets no valset.
        teacher_retries: extra attempts, with a fresh rollout, when a teacher reply does not parse.
        checkpoint_dir: where run state is saved after each phase; a compile with the same setup resumes from it.
        on_failure: ``"raise"`` (default) a ``DistillationError`` naming the cause when a compile cannot produce any
            evidence (an unreachable LM, a metric failing everywhere, a budget used up before any race), or
            ``"return"`` the unchanged program with one warning line.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        teacher_lm: dspy.BaseLM | None = None,
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
        max_metric_calls: int | None = None,
        max_teacher_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        ablation: bool = False,
        num_threads: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.5,
        teacher_retries: int = 1,
        checkpoint_dir: str | None = None,
        log_dir: str | None = None,
        verbose: bool = False,
        on_failure: OnFailure = "raise",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        translated = validate_params(type(self).__init__, locals(), kwargs)  # other optimizers' names, as ours
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
        self.max_metric_calls = max_metric_calls
        self.max_teacher_calls = max_teacher_calls
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.ablation = ablation
        self.num_threads = num_threads
        self.seed = seed
        self.val_fraction = val_fraction
        self.teacher_retries = teacher_retries
        self.checkpoint_dir = checkpoint_dir
        self.log_dir = log_dir
        self.verbose = verbose
        self.on_failure = on_failure
        vars(self).update(translated)  # type: ignore[attr-defined]  # typeshed: vars() overload for classes (untyped base)

    # -- settings -------------------------------------------------------------------------------------------------
    def _with(self, changes: dict[str, Any]) -> ConceptDistillation:
        """A copy of this optimizer with ``changes`` to its parameters, checked as the constructor checks them."""
        changed: Any = copy.copy(self)
        vars(changed).update(changes)
        validate_params(type(self).__init__, vars(changed), {})
        return changed

    def _preset(self) -> Preset:
        return PRESETS[self.auto or "light"]

    def _setting(self, name: str) -> Any:
        value = getattr(self, name)
        return getattr(self._preset(), name) if value is None else value

    def _limits(self, n_train: int, n_val: int, rounds: int, n_predictors: int = 1) -> Limits:
        """The run's hard limits. The student budget is in program runs (``max_metric_calls``, or the preset's:
        passes over the trainset examples the student runs on and over the valset examples raced, two runs per
        held-back valset example, runs per predictor beyond the first and a base, with the reserve for work ahead on
        top) unless ``max_student_calls`` gives it in LM calls; runs become LM calls once the first pass has measured
        the calls one run makes (``Limits.converted``)."""
        teacher = self.max_teacher_calls
        if teacher is None:
            teacher = self._teacher_calls_bound(rounds)
        runs: float | None = None
        if self.max_student_calls is None:
            preset = self._preset()
            runs = self.max_metric_calls
            if runs is None:
                held = held_back_size(n_val)
                sample = min(n_train, self._train_sample())
                raced = n_val if preset.passes_over_whole_valset else n_val - held
                runs = (preset.train_passes * sample + preset.val_passes * raced + 2 * held
                        + preset.predictor_runs * (n_predictors - 1) + preset.base_runs)
                runs = math.ceil(runs / (1 - SPECULATION_SHARE))  # work ahead's reserve on top of a preset's runs
        return Limits(self.max_student_calls, teacher, self.max_tokens, self.max_cost_usd, program_runs=runs)

    def _train_sample(self) -> int:
        """The most trainset examples the student runs on to find mistakes."""
        slots = self._setting("num_batches") * self.mistakes_per_batch
        return max(MIN_TRAIN_SAMPLE, math.ceil(TRAIN_SAMPLE_SLOTS * slots))

    def _default_student_budget(self) -> bool:
        return self.max_student_calls is None and self.max_metric_calls is None

    def _teacher_calls_bound(self, rounds: int) -> int:
        """Most teacher calls ``rounds`` rounds can make: each batch's attempts, each with room for DSPy's
        JSON-adapter fallback call."""
        return 2 * rounds * self._setting("num_batches") * (self.teacher_retries + 1)

    def _run_settings(self, *, rounds: int | None = None) -> RunSettings:
        return RunSettings(
            rounds=self._setting("rounds") if rounds is None else rounds, num_batches=self._setting("num_batches"),
            mistakes_per_batch=self.mistakes_per_batch, max_rules_per_batch=self.max_rules_per_batch,
            max_candidates=self._setting("max_candidates"), screen_size=self._setting("screen_size"),
            confidence_z=self._preset().confidence_z, futility_z=self._preset().futility_z,
            window=self._preset().window, final_z=self._preset().final_z, strict_z=self._preset().strict_z,
            extend=self._preset().extend,
            hold=self._preset().hold,
            train_sample=self._train_sample(),
            min_gain=self.min_gain, metric_threshold=self.metric_threshold,
            teacher_retries=self.teacher_retries, num_threads=self.num_threads or dspy.settings.num_threads or 1,
            seed=self.seed,
        )

    @contextmanager
    def _open(self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example], *,
              mode: str, settings: RunSettings) -> Iterator[tuple[CompileState, CostForecast]]:
        """The run's state (with its limits) and the cost projection, with ``verbose`` logging on for the block."""
        n_predictors = len(student.named_predictors())
        limits = self._limits(len(trainset), len(valset), settings.rounds, n_predictors)
        base = {n: p.signature.instructions for n, p in student.named_predictors()}
        params = {k: v for k, v in self.get_params().items() if k not in {"checkpoint_dir", "log_dir", "verbose"}}
        fp = fingerprint(student, base, trainset, valset, self.metric, self.teacher_lm, {**params, "mode": mode})
        teacher = self.teacher_lm if mode == "compile" else None
        directory = self.checkpoint_dir or self.log_dir
        with verbose_logging(self.verbose), open_state(
            student, trainset=trainset, valset=valset, metric=self.metric, teacher_lm=teacher, settings=settings,
            limits=limits, checkpoint=(directory, f"{mode}_state", fp),
        ) as state:
            # until the first pass measures it, a run is assumed to make one LM call per predictor
            bounds = call_bounds(limits if teacher is not None else dataclasses.replace(limits, teacher_calls=0),
                                 first_pass_runs=len(trainset) + len(valset), assumed_calls_per_run=n_predictors)
            forecast = project(bounds, program=state.program, example=(trainset or valset)[0],
                               base_instructions=state.base_instructions, teacher=state.teacher_lm,
                               mistakes_per_batch=settings.mistakes_per_batch, budget=state.budget, limits=limits,
                               assumed_calls_per_run=n_predictors)
            yield state, forecast

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
        """Return an optimized copy of ``student``; ``student`` itself is never changed. Rules ``student`` already
        carries (an optimized program's) are re-checked on the valset first and continue one list.

        The copy carries ``distillation`` (a ``DistillationResult``) and ``candidate_programs`` (dicts with
        ``score``, ``program`` and ``rules``, best first).
        """
        if kwargs:  # other optimizers' compile arguments: ours for this compile, ignored, or refused
            translated = translate(kwargs, where="compile()", known=["student", "trainset", "teacher", "valset"],
                                   constructor=inspect.signature(type(self).__init__).parameters)
            if translated:
                return self._with(translated).compile(student, trainset=trainset, teacher=teacher, valset=valset)
        if teacher is not None:
            logger.warning("compile(teacher=...) is not used: the teacher is the teacher_lm given to the constructor")
        check_program(student)
        with verbose_logging(self.verbose):  # the split is logged before the run opens
            trainset, valset = split_data(trainset, valset, val_fraction=self.val_fraction, seed=self.seed)
        with self._open(student, trainset, valset, mode="compile", settings=self._run_settings()) as opened:
            state, forecast = opened
            return self._run(state, forecast, student)

    def verify(self, student: dspy.Module, rules: RuleSet, *, valset: list[dspy.Example]) -> dspy.Module:
        """Re-check an existing rule set (e.g. from another student, loaded with ``RuleSet.from_json``) for
        ``student``: no teacher calls; each rule is raced on the valset on top of those kept before it (rules the
        student's instructions already carry first, each rule once). Its checkpoint (``verify_state.jsonl``) is kept
        apart from the compile's."""
        check_program(student)
        if not isinstance(rules, RuleSet):
            raise TypeError(f"rules must be a RuleSet, got {type(rules).__name__}")
        if not len(rules):
            raise ValueError("the rule set is empty: there is nothing to verify")
        rules.check_program(student)
        valset = materialize("valset", valset)
        check_examples("valset", valset)
        check_valset_size(valset)
        with self._open(student, [], valset, mode="verify", settings=self._run_settings(rounds=0)) as opened:
            state, forecast = opened
            found = {(r.predictor, r.text.lower()) for r in state.inherited}  # the program's own rules first
            state.inherited += [Rule(text=r.text, predictor=r.predictor) for r in rules
                                if (r.predictor, r.text.lower()) not in found]
            return self._run(state, forecast, student)

    def _run(self, state: CompileState, forecast: CostForecast, student: dspy.Module) -> dspy.Module:
        """The run: the rules the program carries re-checked, the rounds (none for ``verify``), only the rules shown to
        help over the starting instructions returned, the optional ablation; then the result (``_done``)."""
        try:
            check_run_budget(state.limits, len(state.train_runs), len(state.raced))
            self._recheck_inherited(state)
            for round_index in range(state.settings.rounds):
                if state.stopped or not self._round(state, round_index):
                    break
            self._keep_shown(state)
            if self.ablation and not state.stopped:
                self._ablate(state)
        except STOPPING_ERRORS as exc:
            state.stop_with(exc)
        except DistillationError as exc:
            state.failure = exc
        return self._done(state, student, forecast)

    def _done(self, state: CompileState, student: dspy.Module, forecast: CostForecast) -> dspy.Module:
        """The result; or, when the run produced no evidence, the ``DistillationError`` naming why (raised, or
        with ``on_failure="return"`` logged as one warning line beside the unchanged program)."""
        state.end_runs()
        failure = evidence_failure(state)
        if failure is not None:
            state.current = RuleSet()  # no evidence: the program goes back as it came
            state.stopped = state.stopped or str(failure)
        optimized = finish(state, student, forecast)
        result = optimized.distillation
        if self.log_dir is not None:
            result.save(self.log_dir)
        log_to_mlflow(result, params={k: v for k, v in self.get_params().items()
                                      if isinstance(v, (str, int, float, bool, type(None)))})
        if failure is not None:
            failure.result = result
            if self.on_failure == "raise":
                raise failure
            logger.warning("%s; returning the program unchanged (on_failure='return')", clip_text(failure, 600))
        elif state.stopped:
            logger.warning("%s", stop_summary(result, state.stop_cause))
        return optimized

    def _recheck_inherited(self, state: CompileState) -> None:
        """Race the rules the program already carries (``state.inherited``: an optimized program's; for ``verify``,
        the rules to verify as well) on the valset, each on top of those kept before it, as ``verify`` does: a rule
        that no longer helps on this valset or this student is dropped with the measured reason. With the default
        student budget, the budget grows by what these races can cost (a valset pass per rule)."""
        if not state.inherited:
            return
        found = sum(r.inherited is not None for r in state.inherited)
        if found:
            logger.info("the program carries %d rule(s) from an earlier optimization: each is re-checked on this "
                        "valset and kept only if it still helps", found)
            if self._default_student_budget() and state.limits.program_runs is not None:
                state.set_limits(state.limits.with_more_runs(found * len(state.raced)))
        state.rules += state.inherited
        state.baseline_scores = state.val_scores = self._scores(state, first_pass=state.limits.calls_per_run is None)
        result = self._verifier(state, screen=False).run(state.current, state.inherited, {})
        self._take(state, result)
        if found:
            kept = sum(r.inherited is not None for r in state.current)
            logger.info("earlier rules: %d of %d kept; valset score %s with them", kept, found,
                        fmt_score(mean_score(state.val_scores)))

    def _ablate(self, state: CompileState) -> None:
        """Leave each accepted rule out of the final set in turn (``Rule.ablation_gain``). With the default student
        budget (none given), the budget grows by what the ablation costs."""
        rules = state.current
        if len(rules) < 2 or state.val_scores is None:
            return
        runs = ablation_cost(rules, state.raced)
        logger.info("ablation: leaving each of %d rules out costs up to %d program runs", len(rules), runs)
        if self._default_student_budget() and state.limits.program_runs is not None:
            state.set_limits(state.limits.with_more_runs(runs))
        verdicts, stopped = ablate(state.evaluator, rules, state.raced, state.val_scores, state.min_gain)
        record_verdicts(rules, verdicts)
        if stopped is not None:
            state.stop_with(stopped)

    # -- one round: the paper's three steps -----------------------------------------------------------------------
    def _round(self, state: CompileState, round_index: int) -> bool:
        """Mistakes, induction, verification; returns whether another round can help."""
        number = round_index + 1
        if round_index and not self._room_for_round(state):
            logger.info("round %d not started: the student budget left would not pay for its trainset pass and the "
                        "confirmation of the rules to return", number)
            return False
        found = self._collect_mistakes(state, round_index)
        if not found.mistakes:
            logger.info("round %d: no mistakes left to learn from", number)
            self._baseline(state)
            return False
        candidates = self._induce(state, round_index, found.mistakes)
        before = mean_score(self._baseline(state))  # round 1: the valset baseline kept running during induction
        verified = self._verify(state, round_index, candidates)
        accepted = sum(r.status is RuleStatus.ACCEPTED for r in [*verified.candidates, *verified.placements])
        after = mean_score(state.val_scores)
        state.summaries.append(RoundSummary(number, found.train_score, len(found.mistakes), len(verified.candidates),
                                            accepted, before, after))
        logger.info("round %d: %d of %d candidate rules accepted; valset score %s -> %s", number, accepted,
                    len(verified.candidates), fmt_score(before), fmt_score(after))
        return not state.stopped and accepted > 0

    def _collect_mistakes(self, state: CompileState, round_index: int) -> MistakesFound:
        """Phase 1: the student runs the program, with the rules in force, on the trainset sample; the runs it gets
        wrong are the round's mistakes. In the first round the valset baseline starts beside it (once the runs show
        they cannot fail fast), and the first pass measures the LM calls of a program run."""
        first = state.baseline_scores is None
        baseline = None
        if first and state.settings.num_threads > 1:
            baseline = partial(state.evaluator.prefetch, [(state.current, ex) for ex in state.raced], "verification")
        found = collect_mistakes(state.evaluator, state.current, state.train_runs,
                                 threshold=state.settings.metric_threshold, round_index=round_index, on_usable=baseline)
        state.mistakes += found.mistakes
        if first:
            self._convert_budget(state, found.outcomes)
        logger.info("round %d: student scores %.3f on the trainset with %d mistakes", round_index + 1,
                    found.train_score, len(found.mistakes))
        return found

    @staticmethod
    def _take(state: CompileState, result: VerificationResult) -> None:
        """What verification leaves: its verdicts written into the rules, the rules in force, their scores, the
        candidates it raced in another predictor, what each rule was last raced against, how many candidates a race
        decided, and why it stopped early, if it did."""
        record_verdicts([*result.candidates, *result.placements], result.verdicts)
        state.current, state.val_scores = result.ruleset, result.scores or state.val_scores
        state.rules += result.placements
        state.raced_against.update(result.raced_against)
        state.decisions += len(set(result.decisions) | set(result.raced_against))  # raced, decided or not
        if result.stopped:
            state.end_early(result.stopped, result.cause)

    @classmethod
    def _scores(cls, state: CompileState, *, first_pass: bool = False) -> list[float]:
        """The valset baseline. A metric (or program) that fails on every valset example leaves nothing to
        measure: ``MetricFailedError`` (``ProgramFailedError``) says so, rather than blaming the rules."""
        outcomes = state.evaluator.run([(state.current, ex) for ex in state.raced], phase="verification",
                                       desc="Baseline on valset")
        fail_if_all_failed(outcomes, "valset example")
        if first_pass:
            cls._convert_budget(state, outcomes)
        return [o.score for o in outcomes]

    @staticmethod
    def _convert_budget(state: CompileState, outcomes: list[Outcome]) -> None:
        """After the first pass: measure the LM calls of a program run, convert a budget in runs to LM calls."""
        state.set_limits(state.limits.converted(calls_per_run(outcomes)))
        refine(state.ledger, state.limits)

    def _induce(self, state: CompileState, round_index: int, mistakes: list[Mistake]) -> list[Rule]:
        """Phase 2: the teacher explains batches of the mistakes and writes rules; its proposals become the round's
        candidates (invalid, leaking and duplicate ones rejected), with the near misses of earlier rounds it did not
        propose again."""
        s = state.settings
        batches = make_batches(mistakes, s.mistakes_per_batch, s.num_batches, state.rng)
        brief = TeacherBrief(task=describe_task(state.program, state.base_instructions),
                             rules_in_force=describe_rules(list(state.current)), max_rules=s.max_rules_per_batch,
                             retries=s.teacher_retries, round_index=round_index,
                             fields=program_fields(state.program))
        replay = {b: r for (rnd, b), r in state.resumed.replies.items() if rnd == round_index}
        with progress(total=len(batches), desc=f"Round {round_index + 1}: teacher writes rules") as bar:
            def on_reply(reply: BatchReply) -> None:
                bar.update(1)
                if reply.batch not in replay:
                    state.journal.reply(reply)

            replies = induce(state.teacher_lm, brief, batches, executor=state.executor,
                             seed=state.rng.randrange(1 << 30), on_reply=on_reply, replay=replay,
                             budget=state.budget)
        state.replies += replies
        usable = [r for r in replies if r.error is None]
        refusal = state.budget.refusal(Role.TEACHER)
        if refusal is not None:
            logger.info("teacher budget used up after %d of %d batches", len(replies), len(batches))
        if not usable:
            failed = [r for r in replies if r.transient]
            if refusal is None and failed and len(failed) == len(replies) and all(r.error for r in state.replies):
                raise LMUnavailableError("teacher", failed[0].error or "no reply")  # it never answered
            errors = one_line("; ".join(sorted({r.error for r in replies if r.error})) or refusal or "none asked")
            state.end_early(f"no usable teacher reply in round {round_index + 1} ({errors})", refusal)
        proposed, rejected = rules_from_replies(
            usable, [batches[r.batch] for r in usable], predictor_names=state.names,
            leak_checker=LeakChecker(state.trainset), known_rules=state.rules, round_index=round_index,
            fresh=state.fresh,
        )
        retries = near_misses_to_retry(state.rules, proposed, round_index, state.fresh)
        record_verdicts(proposed, rejected)
        state.rules += proposed + retries
        return proposed + retries

    def _baseline(self, state: CompileState) -> list[float] | None:
        """The valset scores of the rules in force; in the first round, the baseline is measured here."""
        if state.baseline_scores is None:
            state.baseline_scores = state.val_scores = self._scores(state)
        return state.val_scores

    def _verify(self, state: CompileState, round_index: int, candidates: list[Rule]) -> VerificationResult:
        """Phase 3: the first ``max_candidates`` candidates are raced on the valset on top of the rules in force,
        and each joins them only if its gain is shown to be real. The next round's trainset runs may start on
        spare threads meanwhile (booked as phase 1's, "mistakes")."""
        pending, cut = limit_candidates([c for c in candidates if c.status is RuleStatus.CANDIDATE],
                                        state.settings.max_candidates)
        last = round_index + 1 >= state.settings.rounds
        result = self._verifier(state, screen=True).run(state.current, pending, {m.id: m for m in state.mistakes},
                                                        next_trainset=None if last else state.train_runs,
                                                        hold=self._confirmation_runs(state))
        record_verdicts(candidates, cut)
        self._take(state, result)
        return result

    @staticmethod
    def _selection_settings(state: CompileState, *, screen: bool) -> SelectionSettings:
        s = state.settings
        return SelectionSettings(
            min_gain=state.min_gain, confidence_z=s.confidence_z, futility_z=s.futility_z,
            screen_size=s.screen_size if screen else 0, max_score=state.max_score, prior_variance=0.0,
            window=s.window, final_z=s.final_z, strict_z=s.strict_z, extend=s.extend,
        )

    def _verifier(self, state: CompileState, *, screen: bool) -> Verifier:
        return Verifier(state.evaluator, state.raced, state.train_runs, self._selection_settings(state, screen=screen),
                        state.rng, account=state.evaluator.account, predictors=state.names, progress=progress)

    @classmethod
    def _room_for_round(cls, state: CompileState) -> bool:
        """Whether the budget left pays for a further round's trainset pass and still leaves the confirmation of the
        rules to return its runs (a round that ate them would leave nothing to confirm what is already won)."""
        trainset_pass = state.evaluator.unbooked([(state.current, ex) for ex in state.train_runs])
        runs = trainset_pass + cls._confirmation_runs(state)
        return state.evaluator.account.left() >= runs * (state.limits.calls_per_run or 1.0)

    @staticmethod
    def _confirmation_runs(state: CompileState) -> int:
        """Program runs the racing leaves for the confirmation of the returned rules: the held-back valset half for
        them and the starting instructions, or (with the preset's ``hold``) a trainset pass."""
        if state.held_back:
            return 2 * len(state.held_back)
        return len(state.train_runs) if state.settings.hold else 0

    def _keep_shown(self, state: CompileState) -> None:
        """Return only rules whose joint gain over the starting instructions is shown to be real (the longest such
        prefix of the accepted path); the others stay accepted in the report, marked as not returned."""
        if not len(state.current) or state.baseline_scores is None:
            return
        calls_per_run = state.limits.calls_per_run or 1.0
        kept, why = returned_rules(state.evaluator, state.raced, state.train_runs, state.current, state.baseline_scores,
                                   self._selection_settings(state, screen=False), held_back=state.held_back,
                                   calls_per_run=calls_per_run)
        if why is None:
            return
        record_verdicts(state.current, [RuleVerdict(rule.id, rule.round, reason=f"{rule.reason}; {why}")
                                        for rule in state.current if rule not in list(kept)])
        logger.info("%s", why)
        scores = state.evaluator.scores(kept, state.raced)
        state.current = kept
        state.val_scores = [s for s in scores if s is not None] if len(kept) else state.baseline_scores

