"""Errors raised by the knowledge base; every message says what was wrong and how to fix it.

They sit in ``configs.errors``' hierarchy (and keep ``ValueError`` as a base, which older callers
catch): a bad name, file or option is ``BadInput`` (exit 2 / HTTP 400), a missing knowledge base
or document ``NotFound`` (404), a damaged knowledge base ``Unavailable`` (exit 3 / HTTP 503).
"""

from __future__ import annotations

from configs.errors import BadInput, NotFound, Unavailable


class KnowledgeBaseError(BadInput):
    """A knowledge base could not be opened, built or queried."""


class DocumentLoadError(KnowledgeBaseError):
    """A source file is missing, empty, binary or in an encoding we cannot decode."""


class EmbeddingModelError(KnowledgeBaseError):
    """The embedding (or reranker) model is unavailable or does not match the knowledge base."""


class KnowledgeBaseNotFound(KnowledgeBaseError, NotFound):
    """No knowledge base (or no document) by that name."""


class DamagedKnowledgeBaseError(KnowledgeBaseError, Unavailable):
    """A file of the knowledge base is missing, truncated or modified; ``ingest doctor`` or
    ``ingest drop`` recover (both work on a damaged knowledge base)."""

    exit_code = 3
    http_status = 503

    def __init__(self, message: str, *, kb_name: str | None = None) -> None:
        super().__init__(message)
        self.kb_name = kb_name


class StaleVersionError(KnowledgeBaseError):
    """A version a reader had loaded lost its data to newer builds (e.g. Milvus rows deleted two
    builds later); a search retries once on the newest version, and only for this error."""
