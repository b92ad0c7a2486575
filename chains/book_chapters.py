"""Pick the chapters a whole-book question needs, and their relevant passages.

Two signals, fused per chapter by reciprocal rank (like hybrid retrieval):

- retrieval: the KB's own search for the question (and for each named person's full name
  list), hits summed per (document, chapter);
- the character graph: chapters whose chunks mention a person the question names, under any
  of the person's names (a question about 孔明 finds chapters that only say 诸葛亮).

A chapter range and a source restrict both. Each picked chapter keeps its best passages: the
search hits inside it first, then chunks that name the persons, in text order.

A chapter is its section of the document (``kb.get_chapters``), not only its number: a book whose
volumes restart the numbering (上卷 第一章..., 下卷 第一章...) has two chapter 1s, read and
cited apart. A book without headings, or a giant chapter, is read in parts (``_PART_CHARS``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document

__all__ = ["ChapterPick", "name_terms", "pick_chapters"]

ChapterKey = tuple[str, int | None, int]
"""(doc_id, chapter number, offset where the chapter's section starts)."""
_RRF_K = 60
_PART_CHARS = 20_000
"""A chapter longer than this (or a book without headings) is picked in parts of this many characters,
each with its own passages: one giant chapter read as one would give the whole book 4 passages.
Novels' chapters are shorter (三国演义's longest 7,320 characters, 西游记's 13,319)."""


@dataclass
class ChapterPick:
    """One chapter chosen for the map step, with its passages in text order."""

    doc_id: str
    chapter: int | None
    title: str | None
    score: float
    passages: list[Document] = field(default_factory=list)
    heading: str | None = None
    """The chapter's own heading (``第二章``), so labels keep the document's unit."""

    def label(self) -> str:
        """``第2章 休假`` (``kb.citation.chapter_label``); ``第2回`` where the heading is unknown."""
        from kb.citation import chapter_label

        if self.chapter is None:
            return self.title or ""
        return chapter_label(self.chapter, self.title, self.heading or f"第{self.chapter}回")


def name_terms(question: str, graph: Any | None) -> tuple[list[str], list[list[str]]]:
    """Persons the question names: their canonical names, and every name of each person."""
    if graph is None:
        return [], []
    persons = graph.names_in(question)
    return [p.name for p in persons], [[p.name, *p.aliases] for p in persons]


def _in_scope(meta: dict[str, Any], doc_ids: set[str] | None, chapters: tuple[int, int] | None) -> bool:
    if doc_ids is not None and meta.get("doc_id") not in doc_ids:
        return False
    if chapters is None:
        return True
    number = meta.get("chapter")
    return number is not None and chapters[0] <= number <= chapters[1]


def pick_chapters(
    kb: Any,
    question: str,
    *,
    graph: Any | None = None,
    source: str | None = None,
    chapters: tuple[int, int] | None = None,
    max_chapters: int = 12,
    passages_per_chapter: int = 4,
    search_k: int = 60,
) -> list[ChapterPick]:
    """The ``max_chapters`` best chapters for ``question``, in book order (see module doc)."""
    doc_ids = {kb.get_document(source).doc_id} if source else None
    sections = _Sections(kb)
    scores: Counter[ChapterKey] = Counter()
    hits: dict[ChapterKey, list[Document]] = defaultdict(list)
    seen: set[Any] = set()
    _, groups = name_terms(question, graph)
    queries = [question, *(" ".join(names) for names in groups)]
    for query in queries:
        for rank, doc in enumerate(kb.search(query, k=search_k)):
            meta = doc.metadata
            if not _in_scope(meta, doc_ids, chapters):
                continue
            key = sections.key(meta)
            scores[key] += 1.0 / (_RRF_K + rank)
            if meta.get("chunk_id") not in seen:
                seen.add(meta.get("chunk_id"))
                hits[key].append(doc)
    named = _chapters_naming(kb, groups, sections, doc_ids=doc_ids, chapters=chapters)
    for rank, (key, _) in enumerate(Counter({k: len(v) for k, v in named.items()}).most_common()):
        scores[key] += 1.0 / (_RRF_K + rank)
    best = [key for key, _ in scores.most_common(max_chapters)]
    picks = []
    for key in sorted(best, key=lambda k: (k[0], k[2])):
        passages = _chapter_passages(hits.get(key, []), named.get(key, []), passages_per_chapter)
        meta = passages[0].metadata if passages else {}
        # An unnumbered section (番外一 重逢, 后记) is labelled by its heading path, as it is cited.
        title = meta.get("chapter_title") if key[1] is not None else meta.get("section") or meta.get("chapter_title")
        picks.append(ChapterPick(key[0], key[1], title, scores[key], passages, sections.heading(key)))
    return picks


class _Sections:
    """Each document's chapters, read once per pick: a chunk belongs to the chapter holding its offset,
    so two chapters with one number (volumes that restart it) stay apart. Consecutive sections with
    the same number (a heading repeated as a running head) are one chapter."""

    def __init__(self, kb: Any) -> None:
        self.kb = kb
        self._chapters: dict[str, tuple[list[int], list[Any]]] = {}

    def _read(self, doc_id: str) -> tuple[list[int], list[Any]]:
        """Where each chapter starts and its first section, in text order (none without headings)."""
        if doc_id not in self._chapters:
            try:
                sections = sorted(self.kb.get_chapters(doc_id), key=lambda c: c.start)
            except Exception:  # noqa: BLE001 - without sections, chapters are told apart by number only
                sections = []
            firsts = [s for i, s in enumerate(sections) if i == 0 or not _same_chapter(sections[i - 1], s)]
            self._chapters[doc_id] = [c.start for c in firsts], firsts
        return self._chapters[doc_id]

    def _section(self, doc_id: str, offset: int) -> Any | None:
        starts, chapters = self._read(doc_id)
        i = bisect_right(starts, offset) - 1
        return chapters[i] if i >= 0 else None

    def key(self, meta: dict[str, Any]) -> ChapterKey:
        """(doc_id, chapter number, start of the chapter, or of its ``_PART_CHARS`` part, holding the
        chunk's first character)."""
        offset = meta.get("start") or 0
        section = self._section(meta["doc_id"], offset)
        start = section.start if section is not None else 0
        return meta["doc_id"], meta.get("chapter"), start + (offset - start) // _PART_CHARS * _PART_CHARS

    def heading(self, key: ChapterKey) -> str | None:
        """The chapter's own heading (``第二章``), so labels keep the document's unit."""
        section = self._section(key[0], key[2])
        return section.heading if section is not None and section.number is not None else None


def _same_chapter(before: Any, section: Any) -> bool:
    """Whether ``section`` continues the chapter of the ``before`` it: its number again (an unnumbered
    section: its heading again), as a repeated running head does; a restarted number comes later."""
    if section.number is None:
        return before.number is None and before.heading == section.heading
    return before.number == section.number


def _chapters_naming(
    kb: Any,
    groups: Sequence[Sequence[str]],
    sections: _Sections,
    *,
    doc_ids: set[str] | None,
    chapters: tuple[int, int] | None,
) -> dict[ChapterKey, list[Document]]:
    """Chunks per chapter that name one of the question's persons (any of their names), matched in
    simplified script (``kb.script``), as the graph finds names: a traditional-script book says 諸葛亮."""
    from kb.script import fold_script

    found: dict[ChapterKey, list[Document]] = defaultdict(list)
    if not groups:
        return found
    names = [fold_script(n) for group in groups for n in group]
    infos = kb.list_documents() if doc_ids is None else [kb.get_document(d) for d in doc_ids]
    for info in infos:
        for chunk in kb.get_chunks(info.doc_id):
            meta = chunk.metadata
            if not _in_scope(meta, None, chapters):
                continue
            text = fold_script(chunk.page_content)
            if any(n in text for n in names):
                found[sections.key(meta)].append(chunk)
    return found


def _chapter_passages(hits: list[Document], named: list[Document], limit: int) -> list[Document]:
    """Search hits first, then naming chunks, without repeats; returned in text order."""
    chosen: list[Document] = []
    ids: set[Any] = set()
    for doc in [*hits, *named]:
        chunk_id = doc.metadata.get("chunk_id")
        if chunk_id in ids:
            continue
        ids.add(chunk_id)
        chosen.append(doc)
        if len(chosen) >= limit:
            break
    return sorted(chosen, key=lambda d: d.metadata.get("start") or 0)
