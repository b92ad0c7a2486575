"""Events yielded by the chains' generator APIs, for UIs and command lines.

Knowledge-base QA (``KnowledgeBaseQAChain.stream_answer``) yields
``Sources`` once, then (a reasoning model's thinking) ``Reasoning`` pieces, then ``Token`` pieces,
then one ``Answer``. The summarizer
(``StreamMapReduceChain.stream_summary``) yields ``Progress`` while it maps and
collapses, then ``Token`` pieces of the final summary, then one ``Summary``.
Each event class has a ``kind`` string ("sources", "token", ...) for code that
prefers to dispatch on strings, and ``to_dict()`` for JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from langchain_core.documents import Document

__all__ = ["Answer", "Event", "Progress", "Reasoning", "Source", "Sources", "Summary", "Token", "piece_events"]


@dataclass(frozen=True)
class Source:
    """One retrieved passage, with what a citation needs.

    ``start``/``end`` are character offsets into the decoded source text
    (``text_of_source[start:end] == text``); ``end`` is moved in when the passage was cut to
    fit the prompt budget, so the equality still holds for what the model actually read.
    """

    text: str
    source: str | None = None
    doc_id: str | None = None
    chapter: int | None = None
    chapter_title: str | None = None
    start: int | None = None
    end: int | None = None
    score: float | None = None
    chunk_id: int | str | None = None
    page: int | None = None  # 1-based, paged formats (PDF, images)
    page_end: int | None = None  # the last page where the passage spans pages
    section: str | None = None  # heading path, e.g. "第三章 > 3.2 安装" or "第2章 休假"
    truncated: bool = False
    """The passage was cut to fit the prompt budget (``end`` marks where)."""

    @classmethod
    def from_document(cls, doc: Document) -> Source:
        """Read the KB chunk metadata contract (docs/ARCHITECTURE.md) off a Document."""
        meta = doc.metadata
        score = meta.get("score")
        return cls(
            text=doc.page_content,
            source=meta.get("source"),
            doc_id=meta.get("doc_id"),
            chapter=meta.get("chapter"),
            chapter_title=meta.get("chapter_title"),
            start=meta.get("start"),
            end=meta.get("end"),
            score=float(score) if score is not None else None,
            chunk_id=meta.get("chunk_id"),
            page=meta.get("page"),
            page_end=meta.get("page_end"),
            section=meta.get("section"),
            truncated=bool(meta.get("truncated", False)),
        )

    def to_document(self) -> Document:
        """Back to a Document (``text`` as content, the other fields as metadata): the chains'
        ``source_documents`` output."""
        meta = {k: v for k, v in self.to_dict().items() if k != "text"}
        return Document(page_content=self.text, metadata=meta)

    def label(self) -> str:
        """A short citation line, e.g. ``sanguo.txt · 第1回 宴桃园豪杰三结义 · 120–370`` or
        ``manual.pdf · p.12 · 3.2 安装 · 120–370`` (kb.citation.source_label, then the offsets)."""
        from kb.citation import source_label

        parts = [label] if (label := source_label(asdict(self))) else []
        if self.chapter is None and self.chapter_title and not self.section:
            parts.append(self.chapter_title)
        if self.start is not None and self.end is not None:
            parts.append(f"{self.start}–{self.end}")
        return " · ".join(parts) or "(unknown source)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Token:
    """A piece of streamed text (answer or final summary); append it to what is shown."""

    kind: ClassVar[str] = "token"
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Reasoning:
    """A piece of a reasoning model's thinking before its answer (``llm.reasoning``): never part of the
    answer's text; a UI may show it apart (collapsed), or leave it out."""

    kind: ClassVar[str] = "reasoning"
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Sources:
    """The passages the answer will be based on (first QA event), and the question searched."""

    kind: ClassVar[str] = "sources"
    sources: tuple[Source, ...]
    question: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Answer:
    """The final QA event: the full answer and its sources.

    ``refused``: nothing relevant was retrieved, ``text`` is the refusal sentence and no LLM
    was called. ``llm_used`` False: no LLM is configured, ``text`` says so and ``sources``
    holds the retrieved passages. ``question`` is the standalone question used for retrieval.
    """

    kind: ClassVar[str] = "answer"
    text: str
    sources: tuple[Source, ...]
    question: str
    refused: bool = False
    llm_used: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Progress:
    """Summarizer progress: ``done`` of ``total`` units of ``stage`` ("map" or "collapse")."""

    kind: ClassVar[str] = "progress"
    stage: str
    done: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class Summary:
    """The final summarizer event: the full summary and the per-part (map) summaries."""

    kind: ClassVar[str] = "summary"
    text: str
    intermediate: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


Event = Sources | Reasoning | Token | Answer | Progress | Summary


def piece_events(piece: Any, answer: list[str]) -> Iterator[Reasoning | Token]:
    """A streamed (thinking, answer) piece (``llm.reasoning.Split``) as events; its answer text is added to
    ``answer``."""
    if piece.reasoning:
        yield Reasoning(piece.reasoning)
    if piece.answer:
        answer.append(piece.answer)
        yield Token(piece.answer)
