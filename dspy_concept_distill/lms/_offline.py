"""Load LiteLLM's and DSPy's model-price maps from their bundled copies, never from the network.

LiteLLM fetches its price map from GitHub when it is imported, and DSPy's model metadata
(``dspy.clients.model_metadata``, read for capabilities and costs) does the same on first use, unless
``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set at that moment. Offline, that is a stall of several
seconds with retries and warnings on the first call. Both read the variable only while they load, so
:func:`use_bundled_price_maps` sets it just around loading them and then restores the environment
as it was. The one lasting effect: in this process both libraries price models from the maps they
ship with (what they fall back to offline anyway). Nothing happens when they are already loaded.
"""

from __future__ import annotations

import os
import threading

__all__ = ["use_bundled_price_maps"]

_FLAG = "LITELLM_LOCAL_MODEL_COST_MAP"
_lock = threading.Lock()
_loaded: set[str] = set()


def use_bundled_price_maps(*, litellm: bool) -> None:
    """Load DSPy's model metadata, and LiteLLM too when ``litellm``, without a network fetch."""
    wanted = {"dspy", "litellm"} if litellm else {"dspy"}
    with _lock:
        if wanted <= _loaded:
            return
        previous = os.environ.get(_FLAG)
        os.environ[_FLAG] = "True"
        try:
            from dspy.clients import model_metadata

            model_metadata.source_info()  # loads the map once per process
            _loaded.add("dspy")
            if litellm:
                import litellm as litellm_module

                _ = litellm_module.model_cost  # runs the module if DSPy left it lazily imported
                _loaded.add("litellm")
        finally:
            if previous is None:
                os.environ.pop(_FLAG, None)
            else:
                os.environ[_FLAG] = previous
