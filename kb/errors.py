"""Errors raised by the knowledge base; every message says what was wrong and how to fix it."""

from __future__ import annotations


class KnowledgeBaseError(ValueError):
    """A knowledge base could not be opened, built or queried."""


class DocumentLoadError(KnowledgeBaseError):
    """A source file is missing, empty, binary or in an encoding we cannot decode."""


class EmbeddingModelError(KnowledgeBaseError):
    """The embedding (or reranker) model is unavailable or does not match the knowledge base."""
