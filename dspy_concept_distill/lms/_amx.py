"""Keeping llama.cpp off its AMX kernels, which crash.

llama-cpp-python builds llama.cpp for the CPU it is installed on. On a CPU with Intel AMX (Sapphire Rapids and
later) that build loads the weights into ggml's AMX buffer type, and the first ``llama_decode`` dies with a
segmentation fault in ``ggml_backend_amx_mul_mat`` (seen with llama-cpp-python 0.3.36 and SmolLM2-135M Q4_1 on
an AMX Xeon, in-process and in ``llama_cpp.server`` alike). Loading the model with llama.cpp's
``use_extra_bufts = false`` keeps the weights in plain CPU buffers, which work. ``Llama()`` has no argument for
it, so :func:`model_defaults` sets it on the default model parameters that ``Llama.__init__`` starts from.

This module imports nothing from this package: ``_llama_server.py`` loads it by path in the server process.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_PATCH_LOCK = threading.Lock()


@functools.cache
def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU reports Intel AMX (``amx_int8`` or ``amx_tile`` in ``/proc/cpuinfo``; False elsewhere)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_int8" in flags or "amx_tile" in flags


def extra_buffers_wanted(use_extra_bufts: bool | None) -> bool:
    """llama.cpp's ``use_extra_bufts`` to load with: as asked, or by default off on an AMX CPU (see above)."""
    return not cpu_has_amx() if use_extra_bufts is None else bool(use_extra_bufts)


def load_fields(use_extra_bufts: bool | None) -> dict[str, Any]:
    """The model parameters to change from llama.cpp's defaults: ``use_extra_bufts=False`` when
    :func:`extra_buffers_wanted` says so, else none."""
    return {} if extra_buffers_wanted(use_extra_bufts) else {"use_extra_bufts": False}


def _defaults_with(original: Any, fields: dict[str, Any]) -> Any:
    def defaults() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    return defaults


@contextmanager
def model_defaults(**fields: Any) -> Iterator[None]:
    """While the block runs, ``llama_cpp.llama_model_default_params()`` returns parameters with ``fields`` set
    (``Llama.__init__`` starts from it). Nothing changes when ``fields`` is empty."""
    if not fields:
        yield
        return
    bindings: Any = importlib.import_module("llama_cpp.llama_cpp")  # untyped ctypes bindings
    with _PATCH_LOCK:
        original = bindings.llama_model_default_params
        bindings.llama_model_default_params = _defaults_with(original, fields)
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


def patch_for_process(use_extra_bufts: bool | None = None) -> bool:
    """For a process that only serves llama.cpp models (the server): every model it loads gets
    ``use_extra_bufts`` as :func:`extra_buffers_wanted` decides. Returns the value used."""
    fields = load_fields(use_extra_bufts)
    if fields:
        bindings: Any = importlib.import_module("llama_cpp.llama_cpp")  # untyped ctypes bindings
        bindings.llama_model_default_params = _defaults_with(bindings.llama_model_default_params, fields)
    return not fields
