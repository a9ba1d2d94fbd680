"""USD prices of LM usage, from DSPy's bundled price snapshot (LiteLLM's table, shipped inside DSPy): never fetched
from the network. A caller-given table (``{"provider/model": (usd_per_input_token, usd_per_output_token)}``) takes
precedence, e.g. for a private deployment or a fixed table in tests."""

from __future__ import annotations

import functools
from collections.abc import Mapping

UNPRICED_PREFIXES = ("local/", "simulated/")  # in-process engines: no bill

PriceTable = Mapping[str, tuple[float, float]]


def rates(model: str, table: PriceTable | None = None) -> tuple[float, float] | None:
    """(USD per input token, USD per output token) for ``model``, or None when no price is known."""
    if table is not None and model in table:
        price_in, price_out = table[model]
        return float(price_in), float(price_out)
    return _bundled_rates(model)


@functools.lru_cache(maxsize=256)
def _bundled_rates(model: str) -> tuple[float, float] | None:
    if model.startswith(UNPRICED_PREFIXES):
        return None
    try:
        from dspy.clients.model_metadata import model_info, rate

        provider, _, name = model.partition("/")
        info = model_info(provider, name) if name else model_info("openai", model)
        price_in, price_out = rate(info, "input_cost_per_token"), rate(info, "output_cost_per_token")
    except Exception:  # advisory only: a missing or unreadable snapshot is not an error
        return None
    if price_in is None or price_out is None:
        return None
    return float(price_in), float(price_out)


def price(model: str, input_tokens: int, output_tokens: int, table: PriceTable | None = None) -> float | None:
    """USD for the tokens, or None when the model has no known price."""
    found = rates(model, table)
    if found is None:
        return None
    return input_tokens * found[0] + output_tokens * found[1]
