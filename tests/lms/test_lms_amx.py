"""lms/_amx.py: on a CPU with Intel AMX, llama.cpp loads models without its extra buffer types (its AMX kernels
crash with a segmentation fault at the first decode); elsewhere nothing changes. The real-model tests in
tests/lms/test_lms_llama_cpp.py and tests/lms/test_lms_server.py are the end-to-end check on such a machine."""

from __future__ import annotations

import importlib.util

import pytest

from dspy_concept_distill.lms import _amx

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
AMX_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8 avx512_vnni\n"
PLAIN_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"


@pytest.mark.parametrize(("text", "expected"), [(AMX_FLAGS, True), (PLAIN_FLAGS, False), ("", False)])
def test_amx_is_read_from_the_cpu_flags(tmp_path, text, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert _amx.cpu_has_amx(str(cpuinfo)) is expected


def test_a_machine_without_cpuinfo_has_no_amx(tmp_path):
    assert _amx.cpu_has_amx(str(tmp_path / "missing")) is False


def test_extra_buffers_are_off_by_default_only_on_an_amx_cpu(monkeypatch):
    monkeypatch.setattr(_amx, "cpu_has_amx", lambda: True)
    assert _amx.extra_buffers_wanted(None) is False and _amx.extra_buffers_wanted(True) is True
    monkeypatch.setattr(_amx, "cpu_has_amx", lambda: False)
    assert _amx.extra_buffers_wanted(None) is True and _amx.extra_buffers_wanted(False) is False


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason='needs llama-cpp-python: pip install -e ".[local]"')
def test_model_defaults_sets_the_field_for_the_block_and_restores_the_defaults():
    import llama_cpp.llama_cpp as bindings

    original = bindings.llama_model_default_params
    assert original().use_extra_bufts is True  # llama.cpp's default
    with _amx.model_defaults(use_extra_bufts=False):
        assert bindings.llama_model_default_params().use_extra_bufts is False
    assert bindings.llama_model_default_params is original and original().use_extra_bufts is True
    with _amx.model_defaults():
        assert bindings.llama_model_default_params is original  # nothing asked, nothing changed


@pytest.mark.skipif(not HAVE_LLAMA_CPP, reason='needs llama-cpp-python: pip install -e ".[local]"')
def test_the_model_is_loaded_from_the_default_params_model_defaults_changes():
    """Llama() has no use_extra_bufts argument: it must still build its model parameters from
    llama_cpp.llama_model_default_params() (looked up at call time), or the workaround does nothing."""
    import inspect

    from llama_cpp import Llama

    assert "llama_cpp.llama_model_default_params()" in inspect.getsource(Llama.__init__)
    assert "use_extra_bufts" not in inspect.signature(Llama.__init__).parameters
