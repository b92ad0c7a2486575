"""The errors ``app.services`` raises: ``configs.errors`` kinds that carry a Chinese line too.

Each front end translates them at its edge: the web UI shows ``zh / en`` in a toast
(``app.web.errors``), the API answers ``en`` with the kind's HTTP status and OpenAI's
``param``/``code`` fields (``app.api.errors``). Neither imports the other, and nothing here
imports gradio or FastAPI.
"""

from __future__ import annotations

from configs.errors import BadInput, GlmkbError, NotFound, Unavailable, one_line
from kb import EmbeddingModelError

__all__ = [
    "Bilingual",
    "EmbeddingUnavailable",
    "GlmkbError",
    "Missing",
    "NotReady",
    "UserError",
    "bilingual_text",
    "one_line",
]


class Bilingual(Exception):
    """Mixin: ``zh`` for the web page, ``en`` (``str(error)``) for both; ``param``/``code`` for the API."""

    def __init__(self, zh: str, en: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(en)
        self.zh = zh
        self.en = en
        self.param = param
        self.code = code


class UserError(Bilingual, BadInput):
    """Input the user can fix (HTTP 400, exit 2)."""


class Missing(Bilingual, NotFound):
    """A named knowledge base, document or model does not exist (HTTP 404)."""


class NotReady(Bilingual, Unavailable):
    """A model or store cannot serve now (HTTP 503, exit 3)."""


class EmbeddingUnavailable(NotReady, EmbeddingModelError):
    """An embedding model cannot be loaded; still an ``EmbeddingModelError`` for kb's callers."""


def bilingual_text(error: BaseException) -> tuple[str | None, str]:
    """``(zh, en)`` of ``error`` on one line each; ``zh`` is None when it has no Chinese line."""
    if isinstance(error, Bilingual):
        return " ".join(error.zh.split()), " ".join(error.en.split())
    return None, one_line(error)
