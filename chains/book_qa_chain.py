"""``BookQAChain``: whole-book questions ("诸葛亮一生做了哪些事？") by map-reduce over chapters.

One question runs as: pick chapters (``chains.book_chapters``: search hits per chapter, the
character graph's names and aliases, the chapter range) → number their passages ``[1]..[N]``
→ **map** each chapter's passages with ``llm.batch`` into short findings that keep the
numbers → **collapse** the findings while the final prompt exceeds the token budget → **reduce**
into one streamed answer. Markers that do not resolve to a passage the map step read are
dropped from findings and from the streamed answer (``chains.citations``).

The stages are the summarizer's (``map_summaries``, ``collapse_summaries``,
``reduce_summaries`` of ``chains.stream_map_reduce_chain``) with the book prompts.
``stream_answer`` yields ``Progress("select"|"map"|"collapse", done, total)``, one ``Sources``
(passage ``n`` is ``sources[n-1]``), ``Token`` pieces, then one ``Answer``; nothing relevant
→ the refusal sentence; a chapter range with none of the book's chapters → ``ChapterRangeError``.
Stop: close the generator, or pass ``cancel=event`` and set it —
every generation (also the batched map) then ends within a token (``llm.cancel_scope``); cancelling
the task awaiting ``ainvoke`` does the same (``llm.cancellation.run_cancellable``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_classic.chains.base import Chain
from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
    Callbacks,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from pydantic import ConfigDict, Field

from chains.book_chapters import ChapterPick, pick_chapters
from chains.book_prompts import BOOK_COLLAPSE_PROMPT, BOOK_MAP_PROMPT, BOOK_REDUCE_PROMPT, IRRELEVANT
from chains.citations import CitationFilter, clean_citations
from chains.events import Answer, Event, Progress, Reasoning, Source, Sources, Token
from chains.passages import format_numbered
from chains.prompts import REFUSAL
from chains.stream_map_reduce_chain import (
    StageCancelled,
    collapse_summaries,
    load_stream_summarize_chain,
    map_summaries,
    reduce_summaries,
    scoped_stage,
)
from chains.token_budget import fit_documents
from llm.cancellation import run_cancellable

__all__ = ["SELECT_STAGE", "BookQAChain", "check_book_chapters", "format_numbered"]

SELECT_STAGE = "select"
"""``Progress.stage`` once the chapters are chosen (``done == total`` == chapters picked)."""
_JOINT_MARGIN = 8


def check_book_chapters(kb: Any, chapters: tuple[int, int] | None, source: str | None) -> None:
    """``ChapterRangeError`` when no chapter of the book (``source``, else every document) lies in
    ``chapters`` (第200回 of a 120-回 book, a range over a text without headings): an answer from
    nothing would read as "the book does not say", as the summaries already refuse it. Needs no model
    (``ingest ask`` checks before loading one)."""
    from chains.summarize import check_chapters_present

    if chapters is None:
        return
    infos = [kb.get_document(source)] if source else kb.list_documents()
    numbers = [c.number for info in infos for c in kb.get_chapters(info.doc_id)]
    where = Path(infos[0].source).name if source else f"knowledge base {getattr(kb, 'name', '')!r}"
    check_chapters_present(numbers, chapters, where=where)


class BookQAChain(Chain):
    """Answer questions about a whole book (or a chapter range) with cited map-reduce.

    Inputs: ``question`` (plus optional ``chapters`` "第40-60回" and ``source``). Outputs:
    ``answer``, ``source_documents`` (the numbered passages), ``refused``.
    """

    kb: Any
    """A ``kb.KnowledgeBase`` (``search``, ``get_chunks``, ``list_documents``, ``get_document``)."""
    llm: BaseLanguageModel
    graph: Any | None = None
    """A ``kb.characters.CharacterGraph``: names in the question also find their aliases."""
    max_input_tokens: int = Field(6144, ge=64)
    token_max: int | None = None
    """Collapse findings while the answer prompt exceeds this (default ``max_input_tokens``)."""
    batch_size: int = Field(4, ge=1)
    max_chapters: int = Field(12, ge=1)
    passages_per_chapter: int = Field(4, ge=1)
    search_k: int = Field(60, ge=1)
    refusal: str = REFUSAL
    input_key: str = "question"
    output_key: str = "answer"

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @property
    def input_keys(self) -> list[str]:
        return [self.input_key]

    @property
    def output_keys(self) -> list[str]:
        return [self.output_key, "source_documents", "refused"]

    @property
    def _chain_type(self) -> str:
        return "book_qa_chain"

    # ------------------------------------------------------------ small steps
    def select(self, question: str, *, chapters: tuple[int, int] | None, source: str | None) -> list[ChapterPick]:
        """The chapters to read, each with its passages (``chains.book_chapters``)."""
        picks = pick_chapters(
            self.kb,
            question,
            graph=self.graph,
            source=source,
            chapters=chapters,
            max_chapters=self.max_chapters,
            passages_per_chapter=self.passages_per_chapter,
            search_k=self.search_k,
        )
        return [p for p in picks if p.passages]

    def check_chapters(self, chapters: tuple[int, int] | None, source: str | None) -> None:
        """``check_book_chapters`` for this chain's knowledge base."""
        check_book_chapters(self.kb, chapters, source)

    def map_documents(self, picks: Sequence[ChapterPick], question: str) -> tuple[list[Document], list[Document]]:
        """One map Document per chapter (its passages numbered and fitted to the prompt budget),
        and the numbered passages in order (passage ``n`` is the ``n-1``-th)."""
        count = self.llm.get_num_tokens
        budget = self.max_input_tokens - _JOINT_MARGIN
        numbered: list[Document] = []
        mapped: list[Document] = []
        for pick in picks:
            first = len(numbered) + 1
            kept = fit_documents(
                pick.passages,
                render=lambda docs, first=first: BOOK_MAP_PROMPT.format(
                    context=format_numbered(docs, first), question=question
                ),
                max_tokens=budget,
                count_tokens=count,
            )
            if not kept:
                continue
            numbered.extend(kept)
            numbers = list(range(first, first + len(kept)))
            meta = {
                "doc_id": pick.doc_id, "chapter": pick.chapter, "chapter_title": pick.title,
                "chapter_label": pick.label(), "numbers": numbers,
            }  # fmt: skip
            mapped.append(Document(page_content=format_numbered(kept, first), metadata=meta))
        return mapped, numbered

    def findings(self, mapped: Sequence[Document]) -> list[Document]:
        """Map outputs that say something, with only their own chapter's markers, headed by chapter."""
        out = []
        for doc in mapped:
            text = clean_citations(doc.page_content, doc.metadata["numbers"]).strip()
            if not text or text.startswith(IRRELEVANT) or self.refusal in text:
                continue
            label = doc.metadata.get("chapter_label") or ""
            out.append(Document(page_content=f"{label}：{text}" if label else text, metadata=dict(doc.metadata)))
        return out

    # ---------------------------------------------------------------- the run
    def _events(
        self,
        question: str,
        *,
        chapters: str | tuple[int, int] | None,
        source: str | None,
        cancel: threading.Event | None,
        callbacks: Callbacks,
    ) -> Iterator[Event]:
        from chains.summarize import parse_chapter_range

        question = (question or "").strip()
        if not question:
            msg = "the question is empty; ask something about the book, e.g. 诸葛亮一生做了哪些事？"
            raise ValueError(msg)
        span = parse_chapter_range(chapters) if isinstance(chapters, str) else chapters
        self.check_chapters(span, source)
        picks = self.select(question, chapters=span, source=source)
        yield Progress(SELECT_STAGE, len(picks), len(picks))
        mapped_in, numbered = self.map_documents(picks, question)
        sources = tuple(Source.from_document(d) for d in numbered)
        yield Sources(sources, question)
        if not mapped_in:
            yield from self._refuse(question, sources)
            return
        pipeline = load_stream_summarize_chain(
            self.llm,
            map_prompt=BOOK_MAP_PROMPT,
            combine_prompt=BOOK_REDUCE_PROMPT,
            collapse_prompt=BOOK_COLLAPSE_PROMPT,
            combine_document_variable_name="findings",
            map_reduce_document_variable_name="context",
            token_max=self.token_max or self.max_input_tokens,
            batch_size=self.batch_size,
        )
        try:
            mapped = yield from scoped_stage(
                map_summaries(
                    pipeline.llm_chain, mapped_in, document_variable_name="context",
                    batch_size=self.batch_size, callbacks=callbacks, question=question,
                ),
                cancel,
            )
            found = self.findings(mapped)
            if not found:
                yield from self._refuse(question, sources)
                return
            reduce_chain = pipeline.reduce_documents_chain
            collapsed = yield from scoped_stage(
                collapse_summaries(reduce_chain, found, callbacks=callbacks, question=question), cancel
            )
            answer = yield from self._stream_reduce(
                reduce_chain.combine_documents_chain, collapsed, question, len(numbered), cancel, callbacks
            )
        except StageCancelled:
            return
        yield Answer(answer.strip(), sources, question)

    def _stream_reduce(
        self,
        combine_chain: Any,
        docs: Sequence[Document],
        question: str,
        total: int,
        cancel: threading.Event | None,
        callbacks: Callbacks,
    ) -> Generator[Event, None, str]:
        """Stream the answer with unresolvable citation markers removed on the fly."""
        keep = CitationFilter(range(1, total + 1))
        pieces: list[str] = []
        stage = reduce_summaries(combine_chain, docs, callbacks=callbacks, question=question)
        for event in scoped_stage(stage, cancel):
            if isinstance(event, Reasoning):
                yield event
            elif isinstance(event, Token) and (text := keep.feed(event.text)):
                pieces.append(text)
                yield Token(text)
        if tail := keep.flush():
            pieces.append(tail)
            yield Token(tail)
        return re.sub(r"[ \t]+\n", "\n", "".join(pieces))

    def _refuse(self, question: str, sources: tuple[Source, ...]) -> Iterator[Event]:
        yield Token(self.refusal)
        yield Answer(self.refusal, sources, question, refused=True)

    def stream_answer(
        self,
        question: str,
        *,
        chapters: str | tuple[int, int] | None = None,
        source: str | None = None,
        cancel: threading.Event | None = None,
        callbacks: Callbacks = None,
    ) -> Iterator[Event]:
        """Yield ``Progress``, ``Sources``, ``Token`` pieces, then one ``Answer`` (module doc)."""
        manager = CallbackManager.configure(callbacks, self.callbacks, self.verbose, None, self.tags, None, self.metadata)
        run_manager = manager.on_chain_start(None, {self.input_key: question}, name=self.get_name())
        answer: Answer | None = None
        try:
            for event in self._events(
                question, chapters=chapters, source=source, cancel=cancel, callbacks=run_manager.get_child()
            ):
                if isinstance(event, Answer):
                    answer = event
                yield event
        except BaseException as e:
            run_manager.on_chain_error(e)
            raise
        run_manager.on_chain_end(self._outputs(answer))

    def _outputs(self, answer: Answer | None) -> dict[str, Any]:
        if answer is None:
            return {self.output_key: "", "source_documents": [], "refused": False}
        docs = [s.to_document() for s in answer.sources]
        return {self.output_key: answer.text, "source_documents": docs, "refused": answer.refused}

    def _call(self, inputs: dict[str, Any], run_manager: CallbackManagerForChainRun | None = None) -> dict[str, Any]:
        return self._answer(inputs, run_manager, cancel=None)

    async def _acall(
        self, inputs: dict[str, Any], run_manager: AsyncCallbackManagerForChainRun | None = None
    ) -> dict[str, Any]:
        """``_call`` on a worker thread; cancelling the awaiting task (``ainvoke`` under a timeout, a gone client)
        stops the model within a token, also in a batched map step, and waits until it is free."""
        sync_manager = run_manager.get_sync() if run_manager else None
        return await run_cancellable(lambda cancel: self._answer(inputs, sync_manager, cancel=cancel))

    def _answer(
        self, inputs: dict[str, Any], run_manager: CallbackManagerForChainRun | None, *, cancel: threading.Event | None
    ) -> dict[str, Any]:
        """Drain the run to its ``Answer`` (none once ``cancel`` is set)."""
        run_manager = run_manager or CallbackManagerForChainRun.get_noop_manager()
        answer = None
        for event in self._events(
            inputs[self.input_key], chapters=inputs.get("chapters"), source=inputs.get("source"),
            cancel=cancel, callbacks=run_manager.get_child(),
        ):
            if isinstance(event, Answer):
                answer = event
        return self._outputs(answer)
