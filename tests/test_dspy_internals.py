"""Pins the DSPy internals that ``runtime/metering.py`` relies on to meter every LM request a program makes.

``metering.install()`` wraps ``dspy.BaseLM.__call__`` and ``acall``, the one entry point every LM request passes
(adapters call ``lm(messages=...)`` / ``lm.acall(messages=...)``; ``Refine``, ``BestOfN``, ``ReAct`` and
hand-made predictors go through adapters). Inside a run it sends the request through ``lm.copy(num_retries=0)``
(history shared with ``lm``) and does DSPy's retries itself; it mirrors ``execution.prepare``'s rule of which calls
DSPy retries (engine-backed LMs: ``num_retries``; legacy ``forward()`` LMs: none); it carries DSPy's mark of an
adapter's own ``messages=`` call over to the copy (``_deprecation.adapter_message_call``); and it puts its meter
into ``dspy.context``, which ``dspy.Parallel``'s workers inherit. pyproject.toml bounds dspy-ai below 3.5, but patch
releases change internals too: an upgrade that touches them must fail here, loudly, until someone re-checks
``runtime/metering.py`` against the new source (tests/test_program_shapes.py is the end-to-end check) and updates
``VERIFIED_SOURCES``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import warnings

import dspy
import pytest
from dspy.clients import _deprecation, base_lm, execution
from dspy.utils import parallelizer

from dspy_concept_distill.runtime import metering
from dspy_concept_distill.runtime.ledger import Ledger
from dspy_concept_distill.runtime.metering import Budget, Role
from dspy_concept_distill.testing.faults import RATE_LIMIT, Fault, FaultyEngine

settings_module = importlib.import_module("dspy.dsp.utils.settings")


def _dspy_entry(name: str):
    """DSPy's own ``BaseLM.__call__``/``acall`` (the original when metering's wrapper is installed)."""
    found = vars(base_lm.BaseLM)[name]
    return getattr(found, "_cd_dspy", found)


# Digests of the exact sources runtime/metering.py was verified against (dspy-ai 3.4.1).
VERIFIED_SOURCES = {
    "BaseLM.__call__": ("3031d5d67675c840", lambda: _dspy_entry("__call__")),
    "BaseLM.acall": ("62d038fbc5149f15", lambda: _dspy_entry("acall")),
    "BaseLM.copy": ("4d016894999de073", lambda: base_lm.BaseLM.copy),
    "BaseLM._record_response": ("3ed702df0384a3c2", lambda: base_lm.BaseLM._record_response),
    "execution.prepare": ("804f2eb813e287a0", lambda: execution.prepare),
    "execution.execute": ("71ad146e6cbb0b82", lambda: execution.execute),
    "execution.aexecute": ("8e7c28f2cb294990", lambda: execution.aexecute),
    "_deprecation.warn_openai_messages": ("d621706838fb2821", lambda: _deprecation.warn_openai_messages),
    "Adapter.__call__": ("6c434a722eb455bb", lambda: dspy.Adapter.__call__),
    "Adapter.acall": ("76889ecbb1aec69d", lambda: dspy.Adapter.acall),
    "Settings.context": ("5c81b6655d72bc3b", lambda: settings_module.Settings.context),
    "ParallelExecutor._execute_parallel": ("afae9d8d95b987cb", lambda: parallelizer.ParallelExecutor._execute_parallel),
}
RECHECK = ("DSPy changed {name}, which runtime/metering.py relies on to meter every LM request (the entry point it "
           "wraps, the retries it takes over, the copy it sends through, the context it travels in). Re-check the "
           "wrapper against the new source, run tests/test_program_shapes.py, then update VERIFIED_SOURCES.")


@pytest.mark.parametrize("name", sorted(VERIFIED_SOURCES))
def test_the_internals_metering_relies_on_are_the_verified_ones(name):
    digest, source_of = VERIFIED_SOURCES[name]
    source = inspect.getsource(source_of())
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == digest, RECHECK.format(name=name)


def test_adapters_reach_the_lm_through_its_call_and_acall_entry_points():
    assert "lm(messages=messages" in inspect.getsource(dspy.Adapter.__call__)
    assert "lm.acall(messages=messages" in inspect.getsource(dspy.Adapter.acall)
    assert {"__call__", "acall"} <= set(vars(base_lm.BaseLM))


def test_a_copy_with_no_retries_leaves_the_original_and_its_engine_as_they_are():
    engine = FaultyEngine(reply=lambda prompt, index: "hi")
    lm = dspy.LM("faulty/x", engine=engine, num_retries=3)
    copy = lm.copy(num_retries=0)
    assert copy.num_retries == 0 and lm.num_retries == 3 and "num_retries" not in copy.kwargs
    assert copy.engine is engine and copy.history is not lm.history


def test_the_wrapper_is_inert_outside_a_run_and_meters_inside_one(monkeypatch):
    monkeypatch.setattr(metering, "MAX_RETRY_DELAY", 0.0)
    engine = FaultyEngine(reply=lambda prompt, index: "hi", faults={0: Fault(RATE_LIMIT), 2: Fault(RATE_LIMIT)})
    lm = dspy.LM("faulty/x", engine=engine, num_retries=2)
    metering.install()
    metering.install()  # idempotent: wrapped once
    assert not hasattr(vars(base_lm.BaseLM)["__call__"]._cd_dspy, "_cd_dspy")
    assert lm("outside") == ["hi"] and engine.received == 2  # DSPy's own retry
    budget = Budget(Ledger(), max_student_calls=10, max_teacher_calls=None)
    with metering.metering(budget, Role.STUDENT, "t") as meter:
        assert lm("inside") == ["hi"]
    assert engine.received == 4 and budget.ledger.calls(Role.STUDENT) == 2 and meter.calls == 1  # retry booked too
    assert lm.num_retries == 2 and len(lm.history) == 2  # the caller's LM unchanged, its history complete


def test_an_adapters_own_messages_call_stays_free_of_deprecation_warnings_when_metered():
    engine = FaultyEngine(reply=lambda prompt, index: "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]")
    lm = dspy.LM("faulty/x", engine=engine, num_retries=1)
    budget = Budget(Ledger(), None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with metering.metering(budget, Role.STUDENT, "t"), dspy.context(lm=lm):
            assert dspy.Predict("question -> answer")(question="2+2?").answer == "4"
    assert budget.ledger.calls(Role.STUDENT) == 1


def test_dspy_context_reaches_the_workers_of_dspy_parallel():
    engine = FaultyEngine(reply=lambda prompt, index: "[[ ## answer ## ]]\n4\n\n[[ ## completed ## ]]")
    lm = dspy.LM("faulty/x", engine=engine)
    budget = Budget(Ledger(), None, None)
    predict = dspy.Predict("question -> answer")
    with metering.metering(budget, Role.STUDENT, "t"), dspy.context(lm=lm):
        dspy.Parallel(num_threads=3, disable_progress_bar=True)([(predict, {"question": str(i)}) for i in range(6)])
    assert engine.received == budget.ledger.calls(Role.STUDENT) == 6
