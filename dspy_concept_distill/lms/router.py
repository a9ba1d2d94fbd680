"""Several OpenAI-compatible servers as one student: a DSPy engine in front of a ``litellm.Router``.

``dspy.LM`` in DSPy 3.4 takes a model string or an engine, not a LiteLLM ``Router``, so
:class:`LiteLLMRouterEngine` answers DSPy's engine contract (``complete(Request) -> Response``) by sending
each request to a Router model group, which picks a server for it. DSPy keeps what it owns (response
cache, retries, history, usage); the Router owns the choice of server.

    router_lm([server_a.api_base, server_b.api_base], "smollm2-135m")   # least-busy across two servers

Requests carry text only (DSPy's adapters send text); tools, logprobs and reasoning controls are
refused before the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dspy.lm15 import Request, Response, UnsupportedFeatureError, response_from_openai_chat, response_to_events

from dspy_concept_distill.lms._chat import chat_messages
from dspy_concept_distill.lms._offline import use_bundled_price_maps

if TYPE_CHECKING:
    import dspy
    from dspy.lm15 import Config

__all__ = ["AsyncLiteLLMRouterEngine", "LiteLLMRouterEngine", "router_lm"]

_NAME = "LiteLLMRouterEngine"
_PARAMS = frozenset({"temperature", "max_tokens", "top_p", "stop", "seed", "n", "frequency_penalty",
                     "presence_penalty", "response_format"})


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """A canonical response format in the OpenAI chat spelling."""
    if fmt.get("type") != "json_schema":
        return {"type": fmt.get("type", "json_object")}
    inner = {"name": fmt.get("name") or "output", "schema": fmt["schema"]}
    if fmt.get("strict") is not None:
        inner["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": inner}


def _options(config: Config) -> dict[str, Any]:
    """OpenAI chat keyword arguments for a canonical Config; refuses what this engine cannot carry."""
    for name in ("logprobs", "reasoning", "tool_choice", "top_k"):
        if getattr(config, name) is not None:
            raise UnsupportedFeatureError(f"{_NAME} does not carry config.{name}", feature=f"config.{name}")
    if config.probabilities == "required":
        raise UnsupportedFeatureError(f"{_NAME} does not measure probabilities", feature="config.probabilities")
    options: dict[str, Any] = {"n": 1}
    for name in ("temperature", "top_p", "max_tokens", "seed", "frequency_penalty", "presence_penalty"):
        value = getattr(config, name)
        if value is not None:
            options[name] = value
    if config.stop:
        options["stop"] = list(config.stop)
    if config.response_format is not None:
        options["response_format"] = _response_format(config.response_format)
    if config.extensions:
        options["extra_body"] = dict(config.extensions)  # server-specific knobs, sent verbatim
    return options


def _arguments(request: Request, model_group: str) -> dict[str, Any]:
    if not isinstance(request, Request):
        raise TypeError(f"{_NAME}.complete requires a dspy.lm15.Request")
    return {"model": model_group, "messages": chat_messages(request, _NAME), **_options(request.config)}


def _response(raw: Any, request: Request) -> Response:
    body = raw.model_dump() if hasattr(raw, "model_dump") else dict(raw)
    return response_from_openai_chat(body, model=request.model)


def _errors(model: str) -> Any:
    """LiteLLM's exceptions as DSPy's typed errors, so DSPy retries what is transient."""
    from dspy.clients.engines.litellm_errors import litellm_errors

    return litellm_errors(model=model)


class LiteLLMRouterEngine:
    """A DSPy 3.4 engine that sends each request to a ``litellm.Router`` model group.

    Use it as ``dspy.LM("router/<group>", engine=LiteLLMRouterEngine(router, "<group>"),
    async_engine=AsyncLiteLLMRouterEngine(router, "<group>"))``; :func:`router_lm` builds one.

    Args:
        router: A ``litellm.Router`` whose ``model_list`` names ``model_group``.
        model_group: The Router model name to send every request to.
        structured_outputs: Every server in the group constrains output to a JSON schema, so DSPy's
            JSONAdapter may send the signature's schema.
    """

    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, router: Any, model_group: str, *, structured_outputs: bool = False) -> None:
        if not model_group:
            raise ValueError("model_group must name a model in the Router's model_list")
        self.router = router
        self.model_group = model_group
        self.supports_response_schema = structured_outputs
        self.supported_params = _PARAMS

    def complete(self, request: Request) -> Response:
        """One attempt through the Router (it picks the server)."""
        arguments = _arguments(request, self.model_group)
        with _errors(request.model):
            raw = self.router.completion(**arguments)
        return _response(raw, request)

    def stream(self, request: Request) -> Iterator[Any]:
        """Events for one completion (generated in full, then emitted)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release here: the Router belongs to the caller."""

    def __copy__(self) -> LiteLLMRouterEngine:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LiteLLMRouterEngine:
        # A handle to the caller's Router (locks, clients, in-flight counts): copies of the LM share it.
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_group!r}, structured_outputs={self.supports_response_schema})"


class AsyncLiteLLMRouterEngine(LiteLLMRouterEngine):
    """The async counterpart DSPy uses for ``acall``: ``router.acompletion``."""

    async def complete(self, request: Request) -> Response:
        """One attempt through the Router, awaited."""
        arguments = _arguments(request, self.model_group)
        with _errors(request.model):
            raw = await self.router.acompletion(**arguments)
        return _response(raw, request)

    async def stream(self, request: Request) -> AsyncIterator[Any]:  # type: ignore[override]
        """Events for one completion (generated in full, then emitted)."""
        for event in response_to_events(await self.complete(request)):
            yield event
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Nothing to release here: the Router belongs to the caller."""


def router_lm(
    api_bases: Sequence[str],
    model: str,
    *,
    structured_outputs: bool = True,
    routing_strategy: str = "least-busy",
    api_key: str = "none",
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` that spreads its calls over OpenAI-compatible servers serving the same model.

    Args:
        api_bases: The servers' OpenAI base URLs (``http://host:port/v1``), e.g. ``server.api_base``
            of several :class:`~dspy_concept_distill.lms.server.OpenAIServer`.
        model: The name every server knows the model by.
        structured_outputs: The servers constrain output to a JSON schema (see
            :func:`~dspy_concept_distill.lms.openai_compatible.openai_compatible_lm`).
        routing_strategy: LiteLLM's Router strategy; ``"least-busy"`` sends each call to the server
            with the fewest calls in flight (the first one on a tie).
        api_key: The key sent to every server.
        **lm_kwargs: Passed to ``dspy.LM`` (``temperature``, ``max_tokens``, ``cache``...).

    Run calls in parallel (``num_threads`` > 1) to use more than one server at a time.
    """
    import dspy

    if not api_bases:
        raise ValueError("router_lm needs at least one api_base")
    use_bundled_price_maps(litellm=True)
    from litellm import Router

    deployments = [{"model_name": model, "litellm_params": {"model": f"openai/{model}", "api_base": base,
                                                            "api_key": api_key}} for base in api_bases]
    router = Router(model_list=deployments, routing_strategy=routing_strategy)
    sync = LiteLLMRouterEngine(router, model, structured_outputs=structured_outputs)
    asynchronous = AsyncLiteLLMRouterEngine(router, model, structured_outputs=structured_outputs)
    return dspy.LM(f"router/{model}", engine=sync, async_engine=asynchronous, **lm_kwargs)
