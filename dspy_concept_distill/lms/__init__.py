"""Local models for DSPy: an embedded llama.cpp engine, an OpenAI-compatible server helper, and LMs for
OpenAI-compatible servers (one, or several behind a LiteLLM Router).

Nothing here imports ``llama_cpp`` until a model is actually loaded or a server started.
"""

from dspy_concept_distill.lms.llama_cpp import LlamaCppEngine, default_model_path, local_lm
from dspy_concept_distill.lms.openai_compatible import openai_compatible_lm
from dspy_concept_distill.lms.router import router_lm
from dspy_concept_distill.lms.server import OpenAIServer, ServerStartError, start_server

__all__ = [
    "LlamaCppEngine", "OpenAIServer", "ServerStartError", "default_model_path", "local_lm", "openai_compatible_lm",
    "router_lm", "start_server",
]
