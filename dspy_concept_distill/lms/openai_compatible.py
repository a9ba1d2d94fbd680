"""A ``dspy.LM`` for an OpenAI-compatible server that honours JSON schemas (llama.cpp, vLLM, SGLang, a LiteLLM proxy).

DSPy's ``JSONAdapter`` sends the signature's JSON schema (``response_format={"type": "json_schema", ...}``)
only to a model DSPy believes supports it; for ``dspy.LM("openai/<local name>", api_base=...)`` it does
not know, so it asks for ``{"type": "json_object"}`` and the server can only constrain the output to
*some* JSON. :func:`openai_compatible_lm` states that support the way DSPy 3.4 provides for it: it
declares an ``openai-compatible`` provider (``dspy.lm15.register_provider`` with
``ModelSupport(response_schema=True)``) and returns ``dspy.LM("openai-compatible/<model>", api_base=...)``.
DSPy then sends the schema on either of its engines: LiteLLM's OpenAI door (``engine="litellm"``, the
default here) or its native lm15 client (``engine="auto"``).

The declaration is process-wide and additive (a new provider name, registered once, as DSPy's own
documentation describes registrations: an environment fact like an API-key variable). A program saved
with such an LM records the model string ``openai-compatible/<model>``; call :func:`openai_compatible_lm`
once (or :func:`declare_provider`) before loading it elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspy_concept_distill.lms._offline import use_bundled_price_maps

if TYPE_CHECKING:
    import dspy

__all__ = ["PROVIDER", "declare_provider", "openai_compatible_lm"]

PROVIDER = "openai-compatible"
# The key sent when none is given: local servers ignore it, and it keeps an ambient OPENAI_API_KEY
# from being sent to a server that is not OpenAI.
_PLACEHOLDER_KEY = "none"
_DEFAULT_BASE = "http://127.0.0.1:8000/v1"


def declare_provider() -> None:
    """Declare ``openai-compatible/<model>`` to DSPy: OpenAI chat wire, ``max_tokens``, JSON schemas honoured.

    Idempotent: DSPy treats registering the same declaration again as a no-op.
    """
    from dspy.lm15 import (
        AccessPolicy,
        EndpointSupport,
        ModelSupport,
        OpenAIChatCompat,
        ProviderDefinition,
        register_provider,
    )

    compat = OpenAIChatCompat(
        instruction_role="system",
        max_tokens_field="max_tokens",  # llama-cpp-python's server ignores max_completion_tokens
        stream_usage="include",
        thinking_format="none",  # no reasoning dial assumed; a set one is dropped and recorded
        tool_result_name="omit",
        strict_tools="omit",
        cache_control="none",
        tool_result_media="reject",
        json_schema="send",
    )
    access = AccessPolicy(provider=PROVIDER, supports=EndpointSupport(complete=True, stream=True, models=True),
                          auth_modes=("bearer",), base_url=_DEFAULT_BASE)
    definition = ProviderDefinition.chat(access, compat=compat, placeholder_key=_PLACEHOLDER_KEY,
                                         note="an OpenAI-compatible server that honours response_format json_schema")
    register_provider(definition, supports=ModelSupport(response_schema=True))


def openai_compatible_lm(
    model: str,
    api_base: str,
    *,
    structured_outputs: bool = True,
    api_key: str | None = None,
    engine: str = "litellm",
    **lm_kwargs: Any,
) -> dspy.LM:
    """A ``dspy.LM`` for the model ``model`` served at ``api_base`` (``http://host:port/v1``).

    Args:
        model: The name the server knows the model by (vLLM's ``--served-model-name``, llama.cpp's
            ``--model_alias``, a LiteLLM proxy's ``model_name``).
        api_base: The server's OpenAI base URL.
        structured_outputs: Declare that the server constrains output to a JSON schema, so DSPy's
            ``JSONAdapter`` sends the signature's schema (model string ``openai-compatible/<model>``).
            ``False`` gives the plain ``openai/<model>`` LM, which only asks for ``json_object``.
        api_key: The server's key; ``None`` sends a placeholder, never ``OPENAI_API_KEY``.
        engine: DSPy's engine selection: ``"litellm"`` (LiteLLM's OpenAI door) or ``"auto"``
            (DSPy's native client).
        **lm_kwargs: Passed to ``dspy.LM`` (``temperature``, ``max_tokens``, ``cache``, ``num_retries``...).

    Creating the LM and calling it never fetch a price map from the network (see ``_offline``).
    """
    import dspy

    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be the name the server knows the model by, got {model!r}")
    if not api_base.startswith(("http://", "https://")):
        raise ValueError(f"api_base must be an http(s) URL such as http://127.0.0.1:8000/v1, got {api_base!r}")
    use_bundled_price_maps(litellm=engine == "litellm")
    if structured_outputs:
        declare_provider()
        name = f"{PROVIDER}/{model}"
    else:
        name = f"openai/{model}"
    return dspy.LM(name, api_base=api_base, api_key=api_key or _PLACEHOLDER_KEY, engine=engine, **lm_kwargs)
