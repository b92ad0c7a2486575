"""Whole-book answers (scope ``book``) for the QA tab's 全书问答 switch and the API's KB chat.

``ask_book(services, kb_name, question, ...)`` is the one entry both front ends call: it opens the
KB, takes its character graph (cached per document), and streams ``BookQAChain`` events
(``Progress``, ``Sources``, ``Token``..., ``Answer``; see ``chains.book_qa_chain``). Pass
``cancel`` (the session's Stop event) so a Stop during the batched map ends within a token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.language_models import BaseLanguageModel

from app.errors import UserError, one_line
from chains.book_qa_chain import BookQAChain
from chains.events import Event

__all__ = ["SCOPES", "ask_book", "book_chain"]

SCOPES = ("chunk", "book")
"""``scope`` values: ``chunk`` = today's passage QA, ``book`` = whole-book map-reduce."""


def book_chain(
    services: Any,
    kb_name: str | None,
    *,
    source: str | None = None,
    llm: BaseLanguageModel | None = None,
    max_input_tokens: int | None = None,
) -> BookQAChain:
    """A ``BookQAChain`` over the named KB with the shared model (or ``llm``, e.g. the API's
    per-request copy) and the KB's character graph; ``NotReady`` (HTTP 503) without a model."""
    from kb.characters import character_graph

    llm = llm if llm is not None else services.require_llm()
    kb = services.kb(kb_name)
    return BookQAChain(
        kb=kb,
        llm=llm,
        graph=character_graph(kb, source=source),
        max_input_tokens=max_input_tokens or services.settings.llm.max_input_tokens,
    )


def ask_book(
    services: Any,
    kb_name: str | None,
    question: str,
    *,
    chapters: str | None = None,
    source: str | None = None,
    cancel: threading.Event | None = None,
    llm: BaseLanguageModel | None = None,
    max_input_tokens: int | None = None,
    callbacks: Callbacks = None,
) -> Iterator[Event]:
    """Stream a whole-book answer (``chapters`` like "第40-60回", ``source`` a file name).

    The chain is built before the first event, so a missing KB or model is raised here, and so
    is a range that meets none of the book's chapters (``UserError``, in Chinese too)."""
    chain = book_chain(services, kb_name, source=source, llm=llm, max_input_tokens=max_input_tokens)
    check_chapters(chain, chapters or None, source or None)
    return chain.stream_answer(
        question, chapters=chapters or None, source=source or None, cancel=cancel, callbacks=callbacks
    )


def check_chapters(chain: BookQAChain, chapters: str | None, source: str | None) -> None:
    """A readable range with none of the book's chapters (第200回 of 120, a book without 第N回
    headings) answered "根据已知信息无法回答该问题", as if the book said nothing: say why, in Chinese too."""
    from chains.summarize import ChapterRangeError, parse_chapter_range

    if not chapters:
        return
    try:
        chain.check_chapters(parse_chapter_range(chapters), source)
    except ChapterRangeError as e:
        zh = f"书中找不到 {chapters}：超出了书的章节，或书中没有“第N回/第N章”这样的章节标题"
        raise UserError(zh, one_line(e), param="chapters") from e
