"""OpenAI-style chat messages from a canonical ``dspy.lm15.Request`` (text only)."""

from __future__ import annotations

from typing import Any

from dspy.lm15 import Request, TextPart, ThinkingPart, UnsupportedFeatureError

__all__ = ["chat_messages"]


def _text_of(parts: tuple[Any, ...], where: str, engine: str) -> str:
    """Join the text parts of a message; refuse content a text-only model cannot take."""
    texts = []
    for index, part in enumerate(parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ThinkingPart):
            continue  # earlier turns' reasoning is not replayed to the model
        else:
            raise UnsupportedFeatureError(
                f"{engine} takes text only; {where} has a {type(part).__name__}",
                feature=f"{where}.parts[{index}]",
            )
    return "\n".join(texts)


def chat_messages(request: Request, engine: str) -> list[dict[str, str]]:
    """OpenAI-style chat messages; ``engine`` names the caller in refusals of tools and non-text parts."""
    if request.tools:
        raise UnsupportedFeatureError(f"{engine} does not call tools", feature="tools")
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else _text_of(request.system, "system", engine)
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        if message.role == "tool":
            raise UnsupportedFeatureError(f"{engine} does not call tools", feature=f"messages[{index}]")
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": _text_of(message.parts, f"messages[{index}]", engine)})
    return messages
