"""Shared fixtures. Every test runs with DSPy's caches off and DSPy's settings restored afterwards, as in DSPy's
own test suite, so no test sees another's cached LM replies or configuration, and engine call counts are real."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of litellm's price table

import dspy
import pytest

from dspy_concept_distill.testing import SimulatedWorld


@pytest.fixture(autouse=True)
def isolated_dspy():
    """DSPy's disk and memory caches off for each test; the cache object and settings restored afterwards."""
    saved_cache = dspy.cache
    saved_settings = dict(dspy.settings.config)
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    yield
    dspy.cache = saved_cache
    dspy.configure(**saved_settings)


@pytest.fixture
def world() -> SimulatedWorld:
    return SimulatedWorld()
