"""Chat history as LangChain messages: the one converter from every format glmkb accepts.

Chains take history as ``list[BaseMessage]``. Older callers pass ``[(user, assistant), ...]``
pairs, and web front ends pass ``{"role", "content"}`` dicts (Gradio, OpenAI); ``to_messages``
turns all of them into messages, so the UI, the API and the chains share one reading.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

__all__ = ["History", "format_history", "normalize_history", "to_messages"]

History = Sequence[BaseMessage | tuple[str, str] | list[str] | dict[str, object]]
"""What chains accept as history (see ``to_messages``)."""

_DICT_ROLES = {"user": HumanMessage, "human": HumanMessage, "assistant": AIMessage, "ai": AIMessage,
               "system": SystemMessage}


def to_messages(history: History | None) -> list[BaseMessage]:
    """History as messages, oldest first.

    Accepts LangChain messages (``HumanMessage``/``AIMessage``/``SystemMessage``), ``(user,
    assistant)`` pairs (a ``None`` user is skipped, a ``None`` answer is dropped) and
    ``{"role", "content"}`` dicts (content blocks are joined into text). A trailing user message
    without an answer is dropped: it is the current question, which callers pass separately.
    Anything else raises ``ValueError`` naming the accepted formats.
    """
    messages: list[BaseMessage] = []
    for item in history or []:
        messages.extend(_item_messages(item))
    if messages and isinstance(messages[-1], HumanMessage):
        messages.pop()
    return messages


def _item_messages(item: object) -> list[BaseMessage]:
    if isinstance(item, BaseMessage):
        return [item]
    if isinstance(item, dict):
        kind = _DICT_ROLES.get(str(item.get("role")))
        return [] if kind is None else [kind(content=content_text(item.get("content")))]
    if isinstance(item, (list, tuple)) and len(item) == 2:
        user, assistant = item
        if user is None:
            return []
        turn: list[BaseMessage] = [HumanMessage(content=content_text(user))]
        if assistant is not None:
            turn.append(AIMessage(content=content_text(assistant)))
        return turn
    msg = (
        "history must be a list of LangChain messages, of (question, answer) pairs or of "
        f"{{'role': ..., 'content': ...}} messages, got an item of type {type(item).__name__}"
    )
    raise ValueError(msg)


def content_text(content: object) -> str:
    """Text of a message content: a string, or the text of its content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return str(content)


def normalize_history(history: History | None) -> list[tuple[str, str]]:
    """History as ``[(user, assistant), ...]`` pairs (for callers that still want pairs).

    Each user message is paired with the assistant message that follows it; system messages
    and unanswered user messages are left out.
    """
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for message in to_messages(history):
        if isinstance(message, HumanMessage):
            pending = message.text
        elif isinstance(message, AIMessage) and pending is not None:
            pairs.append((pending, message.text))
            pending = None
    return pairs


def format_history(messages: Sequence[BaseMessage]) -> str:
    """Messages as ``用户：... / 助手：...`` lines (system messages left out), e.g. for the
    condense-question prompt."""
    labels = {"human": "用户", "ai": "助手"}
    return "\n".join(f"{labels[m.type]}：{m.text}" for m in messages if m.type in labels)
