"""Fit prompts into a token budget measured with the model's own tokenizer.

Characters are a poor proxy for tokens in Chinese (a character is anywhere from a fraction
of a token to several), so every budget here is checked with ``count_tokens``, normally
``llm.get_num_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from langchain_core.documents import Document

__all__ = [
    "TokenCounter",
    "fit_documents",
    "format_history",
    "normalize_history",
    "trim_history",
    "truncate_to_tokens",
]

TokenCounter = Callable[[str], int]
Turn = tuple[str, str]


def truncate_to_tokens(text: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """The longest prefix of ``text`` that is at most ``max_tokens`` tokens (binary search)."""
    if max_tokens <= 0:
        return ""
    if count_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(text)  # count(text[:low]) <= max < count(text[:high])
    while high - low > 1:
        mid = (low + high) // 2
        if count_tokens(text[:mid]) <= max_tokens:
            low = mid
        else:
            high = mid
    return text[:low]


def cut_document(doc: Document, text: str) -> Document:
    """``doc`` holding only the prefix ``text``, with its ``end`` offset moved to match."""
    metadata = dict(doc.metadata)
    if metadata.get("start") is not None:
        metadata["end"] = metadata["start"] + len(text)
    metadata["truncated"] = True
    return Document(page_content=text, metadata=metadata, id=doc.id)


def fit_documents(
    docs: Sequence[Document],
    *,
    render: Callable[[Sequence[Document]], str],
    max_tokens: int,
    count_tokens: TokenCounter,
    min_tokens: int = 16,
) -> list[Document]:
    """The leading documents (best first) whose ``render`` fits ``max_tokens``.

    The first document that does not fit whole is cut to the room left (if at least
    ``min_tokens``) and the rest dropped. ``render`` produces the text that is measured (the
    whole prompt), so template and separators are counted exactly, not estimated.
    """
    kept: list[Document] = []
    for doc in docs:
        if count_tokens(render([*kept, doc])) <= max_tokens:
            kept.append(doc)
            continue
        room = max_tokens - count_tokens(render([*kept, doc.model_copy(update={"page_content": ""})]))
        if room >= min_tokens:
            text = truncate_to_tokens(doc.page_content, room, count_tokens)
            # Re-check on the whole render: tokens at the joint may merge differently.
            while text and count_tokens(render([*kept, cut_document(doc, text)])) > max_tokens:
                text = text[: max(0, len(text) - max(1, len(text) // 20))]
            if len(text) > 0 and count_tokens(text) >= min_tokens // 2:
                kept.append(cut_document(doc, text))
        break
    return kept


def normalize_history(history: Sequence[object] | None) -> list[Turn]:
    """``[(user, assistant), ...]`` from pairs or Gradio/OpenAI-style message dicts.

    Accepts ``[("问", "答"), ...]``, ``[["问", "答"], ...]`` and
    ``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]``;
    a trailing unanswered user message is dropped (it is the current question).
    """
    if not history:
        return []
    turns: list[Turn] = []
    pending_user: str | None = None
    for item in history:
        if isinstance(item, dict):
            role, content = item.get("role"), _content_text(item.get("content"))
            if role == "user":
                pending_user = content
            elif role == "assistant" and pending_user is not None:
                turns.append((pending_user, content))
                pending_user = None
            continue
        if isinstance(item, (list, tuple)) and len(item) == 2:
            user, assistant = item
            if user is None:
                continue
            turns.append((_content_text(user), _content_text(assistant)))
            continue
        msg = (
            "history must be a list of (question, answer) pairs or of "
            f"{{'role': ..., 'content': ...}} messages, got an item of type {type(item).__name__}"
        )
        raise ValueError(msg)
    return turns


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return "".join(
            b.get("text", "") if isinstance(b, dict) else str(b) for b in content
        )
    return str(content)


def format_history(turns: Sequence[Turn]) -> str:
    """Turns as ``用户：... / 助手：...`` lines for the condense prompt."""
    return "\n".join(f"用户：{user}\n助手：{assistant}" for user, assistant in turns)


def trim_history(
    turns: Sequence[Turn],
    *,
    render: Callable[[Sequence[Turn]], str],
    max_tokens: int,
    count_tokens: TokenCounter,
) -> list[Turn]:
    """The most recent turns whose ``render`` fits ``max_tokens``; the oldest go first."""
    kept = list(turns)
    while kept and count_tokens(render(kept)) > max_tokens:
        kept.pop(0)
    return kept
