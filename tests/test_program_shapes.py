"""Every LM request a program makes while the optimizer runs it is metered, budgeted and booked, and reaches the LM
plain ``dspy.Evaluate`` sends it to, whatever path the program takes to the LM (issue 15, item 1): named predictors,
a predictor created inside ``forward``, module internals (``dspy.Refine``, ``dspy.BestOfN``, ``dspy.ReAct``), a
predictor's own ``lm`` or ``set_lm``, and ``dspy.context(lm=...)`` inside ``forward``.

Two student LMs (``simulated/a``, the configured default, and ``simulated/b``) sit in front of counting engines
(``testing.faults.FaultyEngine`` counts every request it receives); the ledger must book, per model, exactly what
each engine received, at 1 and 32 threads.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.runtime.metering import Role
from dspy_concept_distill.testing import SimulatedStudentEngine, SimulatedWorld, format_reply
from dspy_concept_distill.testing.faults import FaultyEngine

SIGNATURE = "question -> answer: float"
N = 10


class SharedEngine(FaultyEngine):
    """A counting engine that deep copies of its LM share (as a provider's client is shared), so that what it
    ``received`` is every request sent to this LM, whichever copy of the program sent it."""

    def __deepcopy__(self, memo):
        return self


class ToolUsingStudent(SimulatedStudentEngine):
    """The scripted student, which also acts as a ReAct agent: it looks a fact up once, then finishes."""

    def reply(self, prompt, index):
        fields = [spec.name for spec in prompt.outputs()]
        if "next_tool_name" not in fields:
            return super().reply(prompt, index)
        done = "observation_0" in prompt.user
        return format_reply({"next_thought": "I should look it up.", "next_tool_name": "finish" if done else "lookup",
                             "next_tool_args": {} if done else {"query": "total"}}, json_mode=prompt.json_mode)


class AsyncFront:
    """The async counterpart of a counting engine (for ``acall``): the same engine answers, and counts."""

    def __init__(self, engine) -> None:
        self.engine = engine

    async def complete(self, request):
        return self.engine.complete(request)

    async def aclose(self) -> None:
        pass

    def __deepcopy__(self, memo):
        return self


def never_good_enough(args, prediction) -> float:
    return 0.0  # Refine and BestOfN then always make all N attempts


def lookup(query: str) -> str:
    """Look a fact up."""
    return "no fact found"


class Named(dspy.Module):
    def __init__(self, lm_b):
        super().__init__()
        self.predict = dspy.ChainOfThought(SIGNATURE)

    def forward(self, question):
        return self.predict(question=question)


class AdHoc(Named):
    """A predictor created inside ``forward``: not a named predictor of the program."""

    def forward(self, question):
        dspy.Predict("question -> note")(question=question)
        return self.predict(question=question)


class Refined(dspy.Module):
    def __init__(self, lm_b):
        super().__init__()
        self.refine = dspy.Refine(dspy.ChainOfThought(SIGNATURE), N=2, reward_fn=never_good_enough, threshold=1.0)

    def forward(self, question):
        return self.refine(question=question)


class BestOf(dspy.Module):
    def __init__(self, lm_b):
        super().__init__()
        self.best = dspy.BestOfN(dspy.ChainOfThought(SIGNATURE), N=3, reward_fn=never_good_enough, threshold=1.0)

    def forward(self, question):
        return self.best(question=question)


class Agent(dspy.Module):
    def __init__(self, lm_b):
        super().__init__()
        self.agent = dspy.ReAct(SIGNATURE, tools=[lookup], max_iters=3)

    def forward(self, question):
        return self.agent(question=question)


class OwnLMs(dspy.Module):
    """One predictor with ``predictor.lm = lm_b``, one module with ``set_lm(lm_b)``, one on the default LM."""

    def __init__(self, lm_b):
        super().__init__()
        self.note = dspy.Predict("question -> note")
        self.note.lm = lm_b
        self.helper = dspy.ChainOfThought("question -> hint")
        self.helper.set_lm(lm_b)
        self.predict = dspy.ChainOfThought(SIGNATURE)

    def forward(self, question):
        self.note(question=question)
        self.helper(question=question)
        return self.predict(question=question)


class Routed(dspy.Module):
    """Routes its only predictor to ``lm_b`` with ``dspy.context`` inside ``forward``."""

    def __init__(self, lm_b):
        super().__init__()
        self.lm_b = lm_b
        self.predict = dspy.ChainOfThought(SIGNATURE)

    def forward(self, question):
        with dspy.context(lm=self.lm_b):
            return self.predict(question=question)


class InParallel(Named):
    """Runs its predictor in threads that ``dspy.Parallel`` starts inside ``forward``."""

    def forward(self, question):
        runs = dspy.Parallel(num_threads=2, disable_progress_bar=True)(
            [(self.predict, {"question": question}), (self.predict, {"question": question + " "})])
        return runs[0]


class Async(Named):
    """Calls its predictor through DSPy's async path (``acall``)."""

    def forward(self, question):
        return asyncio.run(self.predict.acall(question=question))


SHAPES = [Named, AdHoc, Refined, BestOf, Agent, OwnLMs, Routed, InParallel, Async]


class World:
    """Data, a metric, the teacher and two student LMs in front of counting engines."""

    def __init__(self) -> None:
        self.world = SimulatedWorld()
        self.train, self.val = self.world.split(N, N)
        self.engines = {name: SharedEngine(ToolUsingStudent(self.world), model=name) for name in ("a", "b")}
        self.lms = {name: dspy.LM(f"simulated/{name}", engine=engine, async_engine=AsyncFront(engine))
                    for name, engine in self.engines.items()}
        self.teacher = SharedEngine(self.world_teacher_engine())
        self.teacher_lm = dspy.LM("simulated/teacher", engine=self.teacher)
        dspy.configure(lm=self.lms["a"])

    def world_teacher_engine(self):
        from dspy_concept_distill.testing import ScriptedTeacherEngine

        return ScriptedTeacherEngine(self.world)

    def received(self) -> dict[str, int]:
        return {f"simulated/{name}": engine.received for name, engine in self.engines.items()}


def booked(result) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for row in result.usage.rows():
        if row.role == Role.STUDENT:
            counts[row.model] += row.calls
    return {model: counts[model] for model in ("simulated/a", "simulated/b")}


def evaluate_routes(shape) -> dict[str, int]:
    """Requests per student LM when plain ``dspy.Evaluate`` runs the program on the valset."""
    w = World()
    dspy.Evaluate(devset=w.val, metric=w.world.metric, num_threads=1, display_progress=False,
                  max_errors=len(w.val))(shape(w.lms["b"]))
    return w.received()


@pytest.mark.parametrize("threads", [1, 32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.__name__)
def test_the_ledger_books_every_request_each_lm_received_and_routing_is_the_programs(shape, threads):
    routes = evaluate_routes(shape)
    w = World()
    program = shape(w.lms["b"])
    optimized = ConceptDistillation(metric=w.world.metric, teacher_lm=w.teacher_lm, num_threads=threads,
                                    on_failure="return").compile(program, trainset=w.train, valset=w.val)
    result = optimized.distillation
    assert booked(result) == w.received()  # every request metered and booked, on the model that received it
    assert result.teacher_calls == w.teacher.received
    # each request reached the LM plain dspy.Evaluate sends it to: the same LMs get requests, in the same share
    assert {m for m, n in w.received().items() if n} == {m for m, n in routes.items() if n}
    if routes["simulated/a"] and routes["simulated/b"]:
        assert w.received()["simulated/a"] * routes["simulated/b"] == pytest.approx(
            w.received()["simulated/b"] * routes["simulated/a"], rel=0.25)
    # the caller's program and LMs are unchanged
    assert all(lm.num_retries == 3 for lm in w.lms.values())
    assert all(getattr(p, "lm", None) in (None, w.lms["b"]) for _, p in program.named_predictors())


@pytest.mark.parametrize("threads", [1, 32])
@pytest.mark.parametrize("shape", [AdHoc, Refined, Routed], ids=lambda s: s.__name__)
def test_the_student_budget_holds_for_requests_outside_the_named_predictors(shape, threads):
    w = World()
    optimized = ConceptDistillation(metric=w.world.metric, teacher_lm=w.teacher_lm, num_threads=threads,
                                    max_student_calls=40, on_failure="return").compile(
        shape(w.lms["b"]), trainset=w.train, valset=w.val)
    result = optimized.distillation
    assert sum(w.received().values()) == result.student_calls <= 40
    assert booked(result) == w.received()
    assert "budget" in result.stopped


def test_requests_outside_a_compile_are_not_metered_and_keep_dspys_own_retries():
    """The wrapper of DSPy's LM entry point is inert outside a compile: DSPy retries as it always does, nothing is
    booked anywhere, and the LM's history shows the call."""
    from dspy.lm15 import RateLimitError  # noqa: F401 (the fault kind below raises it)

    from dspy_concept_distill.testing.faults import RATE_LIMIT, Fault

    w = World()
    Named(None)(question=w.val[0].question)  # a compile-free call before any compile
    ConceptDistillation(metric=w.world.metric, teacher_lm=w.teacher_lm, on_failure="return").compile(
        Named(None), trainset=w.train, valset=w.val)
    flaky = FaultyEngine(SimulatedStudentEngine(w.world), faults={0: Fault(RATE_LIMIT), 1: Fault(RATE_LIMIT)})
    lm = dspy.LM("simulated/flaky", engine=flaky, num_retries=3)
    with dspy.context(lm=lm):
        Named(None)(question=w.val[0].question)
    assert flaky.received == 3 and len(lm.history) == 1
    assert dspy.settings.get("_cd_meter") is None
