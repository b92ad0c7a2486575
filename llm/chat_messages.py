"""LangChain messages as the role/content dicts a chat template takes (the one converter).

Both faces of the local model use it: ``ChatGLMChat`` for its input messages and ``ChatGLM``
for its prompt with a per-call ``history`` (``prompt_messages``). Contents are plain text with special-token
strings neutralised (a document saying ``<|system|>`` cannot forge a turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage, ChatMessage

from llm.special_tokens import neutralize_special_tokens

__all__ = ["TEMPLATE_ROLES", "chat_template_messages", "prompt_messages"]

TEMPLATE_ROLES = {"system": "system", "human": "user", "user": "user", "ai": "assistant", "assistant": "assistant"}
"""LangChain message type (or ``ChatMessage`` role) -> chat-template role."""


def chat_template_messages(messages: Sequence[BaseMessage], tokenizer: Any) -> list[dict[str, str]]:
    """System, human and AI messages as ``system``/``user``/``assistant`` dicts.

    Tool messages and non-text content blocks (image, audio, file) raise ``NotImplementedError``:
    the local chat models take text only.
    """
    out: list[dict[str, str]] = []
    for message in messages:
        role = message.role if isinstance(message, ChatMessage) else message.type
        if role not in TEMPLATE_ROLES:
            raise NotImplementedError(f"local chat models do not support {type(message).__name__} ({role!r}) messages")
        if isinstance(message.content, list) and any(
            isinstance(b, dict) and b.get("type") not in ("text", None) for b in message.content
        ):
            raise NotImplementedError("local chat models take text only (no image, audio or file content blocks)")
        out.append({"role": TEMPLATE_ROLES[role], "content": neutralize_special_tokens(message.text, tokenizer)})
    return out


def prompt_messages(
    prompt: str,
    *,
    history: Sequence[tuple[str, str] | BaseMessage] | None,
    system_prompt: str | None,
    tokenizer: Any,
) -> list[dict[str, str]]:
    """Optional system prompt, ``history`` (``(user, assistant)`` pairs or messages), then ``prompt``."""

    def text(content: str) -> str:
        return neutralize_special_tokens(content, tokenizer)

    messages = [{"role": "system", "content": text(system_prompt)}] if system_prompt else []
    for item in history or []:
        if isinstance(item, BaseMessage):
            messages += chat_template_messages([item], tokenizer)
            continue
        user, assistant = item
        messages += [{"role": "user", "content": text(user)}, {"role": "assistant", "content": text(assistant)}]
    messages.append({"role": "user", "content": text(prompt)})
    return messages
