"""USD prices of LM usage, from DSPy's bundled price snapshot (LiteLLM's table, shipped inside DSPy): never fetched
from the network. A caller-given table (``{"provider/model": (usd_per_input_token, usd_per_output_token)}``) takes
precedence, e.g. for a private deployment or a fixed table in tests."""

from __future__ import annotations

import functools
import gzip
import json
import math
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

UNPRICED_PREFIXES = ("local/", "simulated/")  # in-process engines: no bill

PriceTable = Mapping[str, tuple[float, float]]
_SNAPSHOT_PACKAGE, _SNAPSHOT_FILE = "dspy.clients.model_metadata", "snapshot.json.gz"


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
    provider, _, name = model.partition("/")
    if not name:
        provider, name = "openai", model
    try:
        entry = _entry(_snapshot(), provider, name)
    except Exception:  # advisory only: a missing or unreadable snapshot is not an error
        return None
    price_in, price_out = _rate(entry, "input_cost_per_token"), _rate(entry, "output_cost_per_token")
    if price_in is None or price_out is None:
        return None
    return price_in, price_out


@functools.cache
def _snapshot() -> dict[str, Any]:
    """The price table bundled with DSPy, read from the package itself. (DSPy's own ``model_info`` first tries to
    download a fresh table, which stalls or warns offline; this module never does.)"""
    raw = files(_SNAPSHOT_PACKAGE).joinpath(_SNAPSHOT_FILE).read_bytes()
    data = json.loads(gzip.decompress(raw))
    return data if isinstance(data, dict) else {}


def _entry(data: Mapping[str, Any], provider: str, name: str) -> Mapping[str, Any]:
    """The snapshot's entry for ``provider/name``: by full key, by bare name of the same provider, or by alias."""
    keyed = data.get(f"{provider}/{name}")
    if isinstance(keyed, dict):
        return keyed
    bare = data.get(name)
    if isinstance(bare, dict) and bare.get("litellm_provider") == provider:
        return bare
    for entry in data.values():
        if not isinstance(entry, dict) or entry.get("litellm_provider") != provider:
            continue
        aliases = entry.get("aliases")
        if isinstance(aliases, list) and (name in aliases or f"{provider}/{name}" in aliases):
            return entry
    return {}


def _rate(entry: Mapping[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def price(model: str, input_tokens: int, output_tokens: int, table: PriceTable | None = None) -> float | None:
    """USD for the tokens, or None when the model has no known price."""
    found = rates(model, table)
    if found is None:
        return None
    return input_tokens * found[0] + output_tokens * found[1]
