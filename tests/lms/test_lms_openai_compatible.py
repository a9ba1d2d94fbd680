"""LMs for OpenAI-compatible servers (one, or several behind a LiteLLM Router), against scripted HTTP servers.

``ScriptedOpenAIServer`` is not a model: it records each request on 127.0.0.1 and answers every chat
completion with the same JSON text, so these tests pin down what DSPy sends over the wire."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dspy
import pytest
from dspy.lm15 import Config, Message, Request, UnsupportedFeatureError, registered_providers, unregister_provider

from dspy_concept_distill.lms import OpenAIServer, openai_compatible_lm
from dspy_concept_distill.lms._llama_server import OpenAIJsonSchema, translate_body
from dspy_concept_distill.lms.openai_compatible import PROVIDER, declare_provider
from dspy_concept_distill.lms.router import LiteLLMRouterEngine, router_lm

SCHEMA = {"type": "object", "properties": {"answer": {"type": "number"}}, "required": ["answer"]}


class ScriptedOpenAIServer:
    """A scripted chat-completions endpoint (not a model): records bodies and headers, replies ``reply``."""

    def __init__(self, reply: str = '{"answer": 4.0}', delay: float = 0.0) -> None:
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.bodies.append(body)
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                time.sleep(delay)
                data = json.dumps({
                    "id": "scripted", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_port
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers: list[ScriptedOpenAIServer] = []

    def make(**kwargs) -> ScriptedOpenAIServer:
        servers.append(ScriptedOpenAIServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def ask(lm: dspy.LM, question: str = "What is 2 + 2?") -> float:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        return dspy.Predict("question -> answer: float")(question=question).answer


# ─── one server ─────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("engine", ["litellm", "auto"])
def test_the_signature_schema_reaches_the_server(scripted, engine) -> None:
    server = scripted()
    lm = openai_compatible_lm("smollm2", server.api_base, engine=engine, cache=False, max_tokens=16)
    assert lm.model == "openai-compatible/smollm2"
    assert ask(lm) == 4.0
    (body,) = server.bodies
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["schema"]["properties"] == {"answer": {"title": "Answer", "type": "number"}}
    assert fmt["json_schema"]["schema"]["required"] == ["answer"]
    assert body["model"] == "smollm2" and body["max_tokens"] == 16  # llama.cpp reads max_tokens only


def test_without_structured_outputs_dspy_asks_only_for_json_object(scripted) -> None:
    server = scripted()
    lm = openai_compatible_lm("smollm2", server.api_base, structured_outputs=False, cache=False)
    assert lm.model == "openai/smollm2"
    ask(lm)
    assert server.bodies[0]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("structured", [True, False])
def test_an_ambient_openai_key_is_never_sent_to_the_server(scripted, monkeypatch, structured) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leave")
    server = scripted()
    ask(openai_compatible_lm("smollm2", server.api_base, structured_outputs=structured, cache=False))
    assert server.headers[0]["authorization"] == "Bearer none"


def test_server_lm_is_the_structured_lm_at_the_server_address(scripted) -> None:
    fake = scripted()
    server = OpenAIServer(port=fake.port)  # never started: lm() only needs the address
    lm = server.lm(cache=False)
    assert lm.model == "openai-compatible/smollm2-135m" and lm.kwargs["api_base"] == fake.api_base
    ask(lm)
    assert fake.bodies[0]["response_format"]["type"] == "json_schema"


def test_the_declaration_is_idempotent_and_comes_back_after_an_unregister(scripted) -> None:
    declare_provider()
    declare_provider()
    assert [p.id for p in registered_providers()].count(PROVIDER) == 1
    unregister_provider(PROVIDER)
    server = scripted()
    ask(openai_compatible_lm("smollm2", server.api_base, cache=False))
    assert server.bodies[0]["response_format"]["type"] == "json_schema"


def test_bad_arguments_are_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="api_base"):
        openai_compatible_lm("smollm2", "127.0.0.1:8000")
    with pytest.raises(ValueError, match="model"):
        openai_compatible_lm("", "http://127.0.0.1:8000/v1")


# ─── the middleware that teaches llama-cpp-python's server OpenAI's json_schema spelling ────────────


def test_a_json_schema_format_becomes_llama_cpp_pythons_spelling() -> None:
    body = {"model": "m", "messages": [], "response_format": {"type": "json_schema",
                                                              "json_schema": {"name": "x", "schema": SCHEMA}}}
    out = json.loads(translate_body(json.dumps(body).encode()))
    assert out["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert out["messages"] == [] and out["model"] == "m"


@pytest.mark.parametrize("body", [b'{"response_format": {"type": "json_object"}}', b'{"model": "m"}',
                                  b"not json", b"[1, 2]"])
def test_other_bodies_pass_unchanged(body) -> None:
    assert translate_body(body) == body


def run_middleware(path: str, chunks: list[bytes]) -> tuple[dict, bytes]:
    seen: dict = {}

    async def app(scope, receive, send) -> None:
        seen["scope"] = scope
        seen["body"] = (await receive())["body"]

    async def main() -> None:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]

        async def receive():
            return messages.pop(0)

        total = str(sum(len(c) for c in chunks)).encode()
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", total)]}
        await OpenAIJsonSchema(app)(scope, receive, None)

    asyncio.run(main())
    return seen["scope"], seen["body"]


def test_the_middleware_rewrites_a_chunked_chat_body_and_its_length() -> None:
    raw = json.dumps({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}).encode()
    scope, body = run_middleware("/v1/chat/completions", [raw[:10], raw[10:]])
    assert json.loads(body)["response_format"] == {"type": "json_object", "schema": SCHEMA}
    assert dict(scope["headers"])[b"content-length"] == str(len(body)).encode()


def test_the_middleware_leaves_other_routes_alone() -> None:
    raw = json.dumps({"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}).encode()
    _, body = run_middleware("/v1/completions", [raw])
    assert body == raw


# ─── several servers behind a Router ──────────────────────────────────────────────────────────────


def test_parallel_calls_through_the_router_reach_both_servers_with_the_schema(scripted) -> None:
    a, b = scripted(delay=0.2), scripted(delay=0.2)
    lm = router_lm([a.api_base, b.api_base], "smollm2", cache=False, max_tokens=16)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: ask(lm, f"What is {i} + 2?"), range(4)))
    assert answers == [4.0] * 4
    assert len(a.bodies) >= 1 and len(b.bodies) >= 1 and len(a.bodies) + len(b.bodies) == 4
    for body in a.bodies + b.bodies:
        assert body["response_format"]["json_schema"]["schema"]["required"] == ["answer"]
        assert body["model"] == "smollm2" and body["max_tokens"] == 16
    assert lm.history[-1]["usage"]["completion_tokens"] == 5


def test_the_router_lm_answers_async_calls(scripted) -> None:
    server = scripted()
    lm = router_lm([server.api_base], "smollm2", cache=False)
    with dspy.context(adapter=dspy.JSONAdapter()):
        prediction = asyncio.run(dspy.Predict("question -> answer: float").acall(question="2 + 2?", lm=lm))
    assert prediction.answer == 4.0 and len(server.bodies) == 1


class RefusingRouter:
    def completion(self, **kwargs):
        raise AssertionError("the request should have been refused before the Router")


@pytest.mark.parametrize("config", [Config(logprobs=2), Config(top_k=5)])
def test_the_router_engine_refuses_what_it_cannot_carry(config) -> None:
    engine = LiteLLMRouterEngine(RefusingRouter(), "smollm2")
    with pytest.raises(UnsupportedFeatureError):
        engine.complete(Request(model="router/smollm2", messages=(Message.user("hi"),), config=config))


# ─── offline manners ──────────────────────────────────────────────────────────────────────────────

OFFLINE_SCRIPT = """
import json, os, sys
reached = []
def refuse_the_outside(event, args):
    if event == "socket.getaddrinfo" and args[0] not in ("127.0.0.1", "localhost", "::1"):
        reached.append(str(args[0]))
        raise OSError("no network in this test")
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in ("127.0.0.1", "::1"):
        reached.append(str(args[1][0]))
        raise OSError("no network in this test")
sys.addaudithook(refuse_the_outside)
import dspy
from dspy_concept_distill.lms import OpenAIServer, openai_compatible_lm
from dspy_concept_distill.lms.router import router_lm
port, api_base = int(sys.argv[1]), sys.argv[2]
lms = [OpenAIServer(port=port).lm(cache=False), openai_compatible_lm("m", api_base, engine="auto", cache=False),
       openai_compatible_lm("m", api_base, structured_outputs=False, cache=False),
       router_lm([api_base], "m", cache=False)]
with dspy.context(adapter=dspy.JSONAdapter()):
    answers = [dspy.Predict("question -> answer: float")(question="2 + 2?", lm=lm).answer for lm in lms]
print(json.dumps({"reached": reached, "answers": answers,
                  "flag": os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP"), "litellm": "litellm" in sys.modules}))
"""


def test_creating_and_calling_these_lms_never_reaches_beyond_loopback(scripted) -> None:
    server = scripted()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    done = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT, str(server.port), server.api_base],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["answers"] == [4.0] * 4 and len(server.bodies) == 4
    assert report["litellm"], "the LiteLLM routes were not exercised"
    assert report["reached"] == [], f"network attempts: {report['reached']}"
    assert report["flag"] is None, "the environment was not restored"
    assert "Failed to fetch remote model cost map" not in done.stderr
