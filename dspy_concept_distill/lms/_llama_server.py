"""``python -m llama_cpp.server`` that also accepts OpenAI's ``response_format={"type": "json_schema", ...}``.

llama-cpp-python's server constrains output to a JSON schema only in its own spelling,
``{"type": "json_object", "schema": {...}}``, and answers OpenAI's standard spelling (what DSPy and
LiteLLM send, and what vLLM, SGLang and llama.cpp's C++ server accept) with a validation error.
:class:`OpenAIJsonSchema` is an ASGI middleware that rewrites the standard spelling into the server's
before the request is validated. :class:`~dspy_concept_distill.lms.server.OpenAIServer` runs this file
by path with ``llama_cpp.server``'s command-line arguments; it imports nothing from this package, so
the server process needs only llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

__all__ = ["OpenAIJsonSchema", "main", "translate_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def translate_body(body: bytes) -> bytes:
    """The request body with a ``json_schema`` response format in llama-cpp-python's spelling.

    Anything else (another format, no format, a body that is not a JSON object) is returned unchanged.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return body
    fmt = data.get("response_format") if isinstance(data, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return body
    inner = fmt.get("json_schema")
    schema = inner.get("schema") if isinstance(inner, dict) else fmt.get("schema")
    data["response_format"] = {"type": "json_object", "schema": schema} if isinstance(schema, dict) else {
        "type": "json_object"}
    return json.dumps(data).encode()


class OpenAIJsonSchema:
    """ASGI middleware: translate the response format of ``POST .../chat/completions`` bodies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith(
                "/chat/completions"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before sending its body
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = translate_body(b"".join(chunks))
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # later reads wait for the disconnect, as with the real channel
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def exit_with_parent(interval: float = 1.0, grace: float = 10.0) -> threading.Thread:
    """Stop this process once the process that started it is gone (killed before it could stop the server).

    Returns the watching (daemon) thread. The server first gets SIGTERM (uvicorn finishes the request in
    hand), then, ``grace`` seconds later, a hard exit.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _amx_module() -> Any:
    """``_amx.py`` beside this file, imported as part of the package or, in the server process, by path."""
    try:
        from . import _amx
    except ImportError:  # run by path: no package
        spec = importlib.util.spec_from_file_location("_cd_amx", Path(__file__).with_name("_amx.py"))
        assert spec is not None and spec.loader is not None, "a .py file beside this one always has a loader"
        _amx = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_amx)
    return _amx


def main() -> None:
    """Run llama-cpp-python's server command line with the middleware around its app (and, on an AMX CPU,
    every model loaded without the extra buffer types whose kernels crash: see ``_amx.py``)."""
    import llama_cpp.server.__main__ as cli

    exit_with_parent()
    _amx_module().patch_for_process()

    create_app = cli.create_app

    def create_wrapped_app(*args: Any, **kwargs: Any) -> OpenAIJsonSchema:
        return OpenAIJsonSchema(create_app(*args, **kwargs))

    cli.create_app = create_wrapped_app
    cli.main()


if __name__ == "__main__":
    main()
