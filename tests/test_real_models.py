"""Full compiles on a real model: SmolLM2-135M in process (llama.cpp) and behind a real OpenAI-compatible
server on 127.0.0.1 reached through litellm. Bounded (a handful of examples, small max_tokens) but run in CI.

SmolLM2-135M is a real, weak model and a useless teacher: these tests pin down that the whole pipeline runs on
it, records usage, and rejects the nonsense it proposes instead of crashing or making the program worse."""

from __future__ import annotations

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation
from dspy_concept_distill.lms import local_lm, start_server  # needs the local extra: pip install -e ".[local]"
from dspy_concept_distill.testing import assert_verified

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reviews():
    from benchmarks.harness.real.tasks import load_task

    return load_task("reviews", n_train=6, n_val=5, seed=1)


def small_optimizer(metric, teacher) -> ConceptDistillation:
    return ConceptDistillation(metric=metric, teacher_lm=teacher, num_batches=1, mistakes_per_batch=3,
                               max_rules_per_batch=2, num_threads=1, seed=0)


def check_result(result, student_model: str, teacher_model: str) -> None:
    assert result.final_score is not None and result.baseline_score is not None
    assert_verified(result)  # each accepted rule showed a gain above min_gain; no round lowered the valset score
    usage = result.usage_report()
    student_rows = usage[usage.role == "student"]
    assert set(student_rows["model"]) == {student_model}
    assert student_rows["calls"].sum() == result.student_calls > 0
    assert (student_rows["input_tokens"] > 0).all() and (student_rows["output_tokens"] > 0).all()
    if result.mistakes:
        assert result.teacher_calls >= 1
        assert set(usage[usage.role == "teacher"]["model"]) == {teacher_model}
    for rule in result.rules:
        assert rule.status in ("accepted", "rejected") and rule.reason


def test_full_compile_on_the_embedded_model(reviews):
    student = local_lm(max_tokens=24, cache=False)
    teacher = local_lm(max_tokens=256, cache=False)
    dspy.configure(lm=student, adapter=dspy.JSONAdapter())
    program = reviews.program()
    before = program.signature.instructions
    optimized = small_optimizer(reviews.metric, teacher).compile(
        program, trainset=reviews.trainset, valset=reviews.valset)
    result = optimized.distillation
    check_result(result, "local/smollm2-135m", "local/smollm2-135m")
    assert program.signature.instructions == before
    assert result.mistakes, "SmolLM2-135M is expected to make mistakes on this task"
    # grammar-constrained JSON: the tiny teacher's reply parses, so its rules reach verification
    assert any(reply.error is None for reply in result.replies)
    assert result.rules, "the parsed teacher reply should propose rules"
    rechecked = dspy.Evaluate(devset=reviews.valset, metric=reviews.metric, num_threads=1,
                              display_progress=False)(optimized).score / 100
    assert rechecked == pytest.approx(result.final_score)


def test_full_compile_through_litellm_against_a_local_openai_server(reviews):
    with start_server(n_ctx=4096) as server:
        student = server.lm(max_tokens=24, temperature=0.0, cache=False)
        teacher = server.lm(max_tokens=256, temperature=0.0, cache=False)
        assert student.engine == "litellm" and server.api_base.startswith("http://127.0.0.1:")
        dspy.configure(lm=student)
        optimized = small_optimizer(reviews.metric, teacher).compile(
            reviews.program(), trainset=reviews.trainset, valset=reviews.valset)
    result = optimized.distillation
    check_result(result, "openai-compatible/smollm2-135m", "openai-compatible/smollm2-135m")
    assert all(entry.get("usage") for entry in student.history)  # token counts came back over HTTP
    # the teacher's JSON schema reached the server's grammar, so even this tiny teacher's reply parses
    assert result.mistakes and any(reply.error is None for reply in result.replies)
