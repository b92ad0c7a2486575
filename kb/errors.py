"""Errors raised by the knowledge base; every message says what was wrong and how to fix it."""

from __future__ import annotations

from configs.errors import BadInput


class KnowledgeBaseError(ValueError):
    """A knowledge base could not be opened, built or queried."""


class DocumentLoadError(KnowledgeBaseError, BadInput):
    """A source file is missing, empty, binary, damaged, encrypted, hostile or in a format or
    encoding we cannot read (the user's input: exit 2 / HTTP 400)."""


class EmbeddingModelError(KnowledgeBaseError):
    """The embedding (or reranker) model is unavailable or does not match the knowledge base."""
