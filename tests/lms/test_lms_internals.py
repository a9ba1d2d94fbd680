"""Pins the llama-cpp-python (and DSPy) internals that dspy_concept_distill.lms relies on.

``lms/_runtime.py`` overrides ``Llama.generate`` and steers its prompt-cache reuse through ``n_tokens`` so the
prompt is evaluated in aligned blocks; ``lms/_llama_server.py`` wraps ``llama_cpp.server``'s app through its
``__main__`` module. pyproject.toml bounds llama-cpp-python below 0.4, but patch releases change these
internals too: an upgrade that touches them must fail here, loudly, until someone re-checks the override
(``test_outputs_do_not_depend_on_earlier_calls`` in tests/lms/test_lms_llama_cpp.py, real model) and updates
the pins below.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason='needs llama-cpp-python: pip install -e ".[local]"')

# Digests of the exact source lms/_runtime.py's override was verified against (llama-cpp-python 0.3.36).
VERIFIED_SOURCES = {
    "Llama.generate": "6f16f3b97ede3b9f",
    "Llama.eval": "01b45d258b6688c7",
}
RECHECK = ("llama-cpp-python changed {name}, whose internals lms/_runtime.py's BlockAlignedLlama relies on "
           "(prefix reuse through n_tokens/_input_ids, evaluation in n_batch blocks from n_tokens). Re-check the "
           "override against the new source, run tests/lms/test_lms_llama_cpp.py with the real model, then update "
           "VERIFIED_SOURCES.")


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_overridden_generate_has_the_signature_the_override_forwards() -> None:
    from llama_cpp import Llama

    names = parameters(Llama.generate)
    assert names[:2] == ["self", "tokens"]  # the override takes tokens first and forwards the rest
    assert {"reset", "grammar", "temp", "top_k", "top_p"} <= set(names)
    assert inspect.isgeneratorfunction(Llama.generate)


@pytest.mark.parametrize("name", sorted(VERIFIED_SOURCES))
def test_the_prompt_cache_internals_are_the_verified_ones(name) -> None:
    from llama_cpp import Llama

    source = inspect.getsource(getattr(Llama, name.split(".")[1]))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == VERIFIED_SOURCES[name], RECHECK.format(name=name)


def test_the_state_the_override_reads_and_writes_exists() -> None:
    from llama_cpp import Llama

    assert isinstance(inspect.getattr_static(Llama, "_input_ids"), property)
    assert callable(Llama.reset) and parameters(Llama.eval) == ["self", "tokens"]
    init = inspect.getsource(Llama.__init__)
    for attribute in ("self.n_batch", "self.n_tokens", "self.input_ids"):
        assert attribute in init, f"Llama no longer sets {attribute}"
    assert {"model_path", "n_ctx", "n_threads", "n_batch", "chat_format", "verbose"} <= set(parameters(Llama.__init__))


def test_chat_completion_takes_every_option_the_engine_passes() -> None:
    from llama_cpp import Llama

    passed = {"messages", "seed", "temperature", "top_p", "top_k", "max_tokens", "stop", "frequency_penalty",
              "presence_penalty", "grammar", "min_p", "typical_p", "repeat_penalty", "mirostat_mode", "mirostat_tau",
              "mirostat_eta"}
    assert passed <= set(parameters(Llama.create_chat_completion))


def test_the_grammar_helpers_exist() -> None:
    from llama_cpp import llama_grammar

    assert isinstance(llama_grammar.JSON_GBNF, str) and llama_grammar.JSON_GBNF.strip()
    assert parameters(llama_grammar.LlamaGrammar.from_string) == ["grammar", "verbose"]
    assert "root" in llama_grammar.json_schema_to_gbnf('{"type": "object", "properties": {"a": {"type": "number"}}}')


def test_the_server_entry_point_the_middleware_wraps() -> None:
    import llama_cpp.server.__main__ as cli
    from llama_cpp.llama_types import ChatCompletionRequestResponseFormat

    assert callable(cli.create_app) and callable(cli.main)
    main = inspect.getsource(cli.main)
    assert "create_app(" in main and "uvicorn.run(" in main  # main() looks create_app up in its module
    # the spelling the middleware rewrites to: json_object with a schema
    assert "schema" in ChatCompletionRequestResponseFormat.__annotations__


def test_the_dspy_internals_lms_uses_exist() -> None:
    from dspy.clients import model_metadata
    from dspy.clients.engines.litellm_errors import litellm_errors

    assert callable(litellm_errors) and callable(model_metadata.source_info)
    assert "LITELLM_LOCAL_MODEL_COST_MAP" in inspect.getsource(model_metadata)
