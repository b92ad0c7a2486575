"""Numbered passages for prompts: ``[n]（chapter title）text`` blocks that answers cite as ``[n]``.

One format for the knowledge-base QA prompt (numbered from 1) and the book chain's map
prompts (numbered on across chapters), so a marker means the same thing in both.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.documents import Document

__all__ = ["format_numbered", "format_passages"]


def format_numbered(docs: Sequence[Document], first: int) -> str:
    """Passages as ``[n]（title）text`` blocks numbered from ``first``."""
    blocks = []
    for i, doc in enumerate(docs, first):
        title = doc.metadata.get("chapter_title")
        blocks.append(f"[{i}]（{title}）{doc.page_content}" if title else f"[{i}]{doc.page_content}")
    return "\n\n".join(blocks)


def format_passages(docs: Sequence[Document]) -> str:
    """Number the passages ``[1] ...`` (with chapter titles when known) for the prompt."""
    return format_numbered(docs, 1)
