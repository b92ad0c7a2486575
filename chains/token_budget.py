"""Fit prompts into a token budget measured with the model's own tokenizer.

Characters are a poor proxy for tokens in Chinese (a character is anywhere from a fraction
of a token to several), so every budget here is checked with ``count_tokens``, normally
``llm.get_num_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from langchain_core.documents import Document

from chains.history import format_history, normalize_history  # re-exported: they moved to chains.history

__all__ = [
    "TokenCounter",
    "fit_documents",
    "format_history",
    "normalize_history",
    "trim_history",
    "truncate_to_tokens",
]

TokenCounter = Callable[[str], int]
T = TypeVar("T")


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


def trim_history(
    turns: Sequence[T],
    *,
    render: Callable[[Sequence[T]], str],
    max_tokens: int,
    count_tokens: TokenCounter,
) -> list[T]:
    """The most recent turns (or messages) whose ``render`` fits ``max_tokens``; the oldest go first."""
    kept = list(turns)
    while kept and count_tokens(render(kept)) > max_tokens:
        kept.pop(0)
    return kept
