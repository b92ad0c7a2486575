"""Chapter-aware summarizing of files, knowledge-base documents and chapter ranges.

``stream_summary(docs, llm=...)`` is the entry point for UIs and the CLI: it cuts the
documents into map pieces that fit the model's prompt budget (one per chapter, long chapters
split), then runs the ``StreamMapReduceChain`` and yields its events (``Progress``, then
``Token`` pieces of the final summary, then one ``Summary``). The documents come from
``documents_from_file``, ``documents_from_text`` or ``documents_from_kb``, optionally
narrowed with ``chapters="第1-10回"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.prompts import BasePromptTemplate
from langchain_text_splitters import RecursiveCharacterTextSplitter

from chains.events import Event
from chains.stream_map_reduce_chain import load_stream_summarize_chain
from configs.errors import BadInput
from kb.splitting import CHAPTER_UNITS, CN_NUMERAL_CHARS

__all__ = [
    "ChapterRangeError",
    "chapter_documents",
    "check_chapters_present",
    "documents_from_file",
    "documents_from_kb",
    "documents_from_text",
    "map_piece_budget",
    "parse_chapter_range",
    "select_chapters",
    "split_to_budget",
    "stream_summary",
]

ChapterRange = tuple[int, int]


class ChapterRangeError(BadInput):
    """A chapter range that cannot be read, or that meets none of the text's chapters."""

_NUM = rf"[0-9０-９]+|[{CN_NUMERAL_CHARS}]+"
# Matched against the spec with all whitespace removed: adjacent optional ``\s*`` runs made
# the old pattern backtrack quadratically ("1" + 30k spaces + "-" took 28 s and froze the UI,
# issue 20 #4); without whitespace every position has one way to match.
_CHAPTER_RANGE = re.compile(
    rf"第?(?P<first>{_NUM})[{CHAPTER_UNITS}]?(?:(?:-|~|～|—+|–|－|至|到)第?(?P<last>{_NUM})[{CHAPTER_UNITS}]?)?"
)
_MAX_SPEC_CHARS = 64
# Map pieces leave this many tokens spare: tokens can merge differently where text meets template.
_JOINT_MARGIN = 8
_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", "…", "，", "、", " ", ""]


def parse_chapter_range(spec: str) -> ChapterRange:
    """``"第1-10回"``, ``"1-10"``, ``"第一至十回"``, ``"5"`` -> ``(first, last)``, inclusive."""
    from kb import chinese_number

    compact = "".join((spec or "").split())
    match = _CHAPTER_RANGE.fullmatch(compact) if len(compact) <= _MAX_SPEC_CHARS else None
    if not match:
        msg = f"chapter range {spec!r} not understood; write it like 1-10, 第1-10回 or 第五回"
        raise ChapterRangeError(msg)
    first = chinese_number(match.group("first"))
    last = chinese_number(match.group("last") or match.group("first"))
    if first < 1 or last < first:
        msg = f"chapter range {spec!r} is empty: give the first chapter (from 1), then a later or equal last one"
        raise ChapterRangeError(msg)
    return first, last


def chapter_documents(
    text: str, *, source: str, doc_id: str | None = None, chapters: Sequence[Any] | None = None
) -> list[Document]:
    """One Document per chapter (and the preamble, ``chapter=None``), with KB-style metadata.

    ``chapters`` are ``kb.Chapter``s (``number``, ``title``, ``start``, ``end``), found with
    ``kb.split_chapters`` when not given. A text without chapter headings is one Document.
    ``start``/``end`` are offsets into ``text`` (``text[start:end] == page_content``).
    """
    from kb import split_chapters

    base = {"source": source, "doc_id": doc_id}
    chapters = split_chapters(text) if chapters is None else chapters
    if not chapters:
        meta = {**base, "chapter": None, "chapter_title": None, "start": 0, "end": len(text)}
        return [Document(page_content=text, metadata=meta)]
    docs = []
    for ch in chapters:
        body = text[ch.start : ch.end]
        if not body.strip():
            continue
        meta = {**base, "chapter": ch.number, "chapter_title": ch.title, "start": ch.start, "end": ch.end}
        docs.append(Document(page_content=body, metadata=meta))
    return docs


def select_chapters(docs: Sequence[Document], chapters: str | ChapterRange | None) -> list[Document]:
    """The documents whose ``chapter`` lies in the range (all of them when ``chapters`` is None)."""
    if chapters is None:
        return list(docs)
    first, last = parse_chapter_range(chapters) if isinstance(chapters, str) else chapters
    check_chapters_present([d.metadata.get("chapter") for d in docs], (first, last))
    return [d for d in docs if d.metadata.get("chapter") is not None and first <= d.metadata["chapter"] <= last]


def check_chapters_present(
    numbers: Sequence[int | None], chapters: ChapterRange, *, where: str = "this document"
) -> None:
    """``ChapterRangeError`` when none of the chapter ``numbers`` (None: text outside chapters) lies in
    ``chapters``: a summary, or a character graph, of nothing would read as an empty result."""
    found = sorted({n for n in numbers if n is not None})
    first, last = chapters
    if not found:
        raise ChapterRangeError(f"{where} has no chapter headings (第N回/章), so a chapter range cannot be used")
    if not any(first <= n <= last for n in found):
        raise ChapterRangeError(f"no chapters {first}-{last} in {where}; it has chapters {found[0]}-{found[-1]}")


def documents_from_text(
    text: str,
    *,
    source: str,
    doc_id: str | None = None,
    chapters: str | ChapterRange | None = None,
    sections: Sequence[Any] | None = None,
) -> list[Document]:
    """Chapter documents of ``text`` (``sections``: known ``kb.Chapter``s), narrowed to ``chapters``."""
    if not text.strip():
        msg = f"{source} is empty: nothing to summarize"
        raise ValueError(msg)
    docs = chapter_documents(text, source=source, doc_id=doc_id, chapters=sections)
    return select_chapters(docs, chapters)


def documents_from_file(path: str | Path, *, chapters: str | ChapterRange | None = None) -> list[Document]:
    """Chapter documents of a file in any format a knowledge base reads (a text file in any
    Chinese encoding, PDF, DOCX, EPUB, ...), read as ``ingest build`` reads it (structural
    headings, or 第N回 lines), narrowed to ``chapters``."""
    from kb import open_document

    document = open_document(path)
    text = "".join(document.blocks())
    sections = document.chapters(length=len(text))
    return documents_from_text(text, source=str(path), chapters=chapters, sections=sections)


def documents_from_kb(kb: Any, ref: str, *, chapters: str | ChapterRange | None = None) -> list[Document]:
    """Chapter documents of a ``kb.KnowledgeBase`` document (doc_id, source, path or file name)."""
    info = kb.get_document(ref)
    return documents_from_text(
        kb.get_document_text(info.doc_id),
        source=info.source,
        doc_id=info.doc_id,
        chapters=chapters,
        sections=kb.get_chapters(info.doc_id),
    )


def split_to_budget(
    docs: Sequence[Document], *, max_tokens: int, count_tokens: Callable[[str], int]
) -> list[Document]:
    """Split documents longer than ``max_tokens`` at paragraph/sentence ends; offsets kept exact.

    Pieces of one chapter get ``part`` (1, 2, ...) and ``parts`` metadata.
    """
    if max_tokens < 1:
        msg = f"no room for text in the map prompt (budget {max_tokens} tokens); raise llm.max_input_tokens"
        raise ValueError(msg)
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=max_tokens,
        chunk_overlap=0,
        length_function=count_tokens,
        separators=_SEPARATORS,
        keep_separator="end",
        strip_whitespace=False,
        add_start_index=True,
    )
    out: list[Document] = []
    for doc in docs:
        if count_tokens(doc.page_content) <= max_tokens:
            out.append(doc)
            continue
        pieces = splitter.split_documents([Document(page_content=doc.page_content)])
        base = doc.metadata.get("start")
        for i, piece in enumerate(pieces, 1):
            offset = piece.metadata["start_index"]
            meta = {**doc.metadata, "part": i, "parts": len(pieces)}
            if base is not None:
                meta["start"] = base + offset
                meta["end"] = base + offset + len(piece.page_content)
            out.append(Document(page_content=piece.page_content, metadata=meta))
    return out


def map_piece_budget(llm: BaseLanguageModel, map_prompt: BasePromptTemplate, max_input_tokens: int) -> int:
    """Tokens of text one map prompt can hold within ``max_input_tokens``."""
    empty = map_prompt.format(**{v: "" for v in map_prompt.input_variables})
    return max_input_tokens - llm.get_num_tokens(empty) - _JOINT_MARGIN


def stream_summary(
    docs: Sequence[Document],
    *,
    llm: BaseLanguageModel,
    max_input_tokens: int,
    batch_size: int = 4,
    token_max: int | None = None,
    callbacks: Callbacks = None,
    **chain_options: Any,
) -> Iterator[Event]:
    """Summarize ``docs`` (e.g. chapters) and yield ``Progress``, ``Token`` pieces, ``Summary``.

    Each document is split to fit the map prompt into ``max_input_tokens`` (the model's
    tokenizer); the intermediate summaries are collapsed while the combine prompt exceeds
    ``token_max`` (default ``max_input_tokens``). ``chain_options`` go to
    ``load_stream_summarize_chain`` (prompts, ``reduce_llm``, ...).
    """
    chain = load_stream_summarize_chain(
        llm, token_max=token_max or max_input_tokens, batch_size=batch_size, **chain_options
    )
    budget = map_piece_budget(llm, chain.llm_chain.prompt, max_input_tokens)
    pieces = split_to_budget(docs, max_tokens=budget, count_tokens=llm.get_num_tokens)
    yield from chain.stream_summary(pieces, callbacks=callbacks)
