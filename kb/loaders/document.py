"""The one interface every format's loader returns: text in blocks plus its structure.

A :class:`LoadedDocument` has the shape :class:`kb.loading.TextFile` has (``blocks()`` yields
the extracted text in order, ``encoding`` says how it was read), plus the structure a citation
needs: the headings (chapters and sections, with offsets into the extracted text) and, for
paged formats, where each page starts. Offsets are exact: the text that ``blocks()`` yields,
joined, is what chunk ``start``/``end`` index into.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kb.splitting import CHAPTER_HEADING, VOLUME_UNIT, Chapter, chinese_number

# Text of binary formats is extracted at open and yielded in blocks of about this many characters.
BLOCK_CHARS = 1 << 18


@dataclass(frozen=True)
class Heading:
    """A chapter or section heading: ``title`` at offset ``start`` of the extracted text."""

    start: int
    level: int  # 1 = top (PDF outline level 0, DOCX "Heading 1", <h1>, "#")
    title: str
    # Where the heading's line starts (before a Markdown "## "): the previous chapter ends there.
    line_start: int | None = None


@dataclass(frozen=True)
class Place:
    """Where a chunk lies in its document: 1-based pages (None where the format has none) and
    its heading path (``"第三章 > 3.2 安装"``, None before the first heading)."""

    page: int | None = None
    page_end: int | None = None
    section: str | None = None


@dataclass
class LoadedDocument:
    """A document read by one of the loaders (see the module docstring)."""

    path: Path
    format: str  # one of kb.loaders.FORMATS: "text", "markdown", "csv", "pdf", "docx", "pptx", ...
    encoding: str  # text files: the codec; other formats: the format's name
    read_blocks: Callable[[], Iterable[str]] = field(repr=False)
    # Structural headings in order; empty: chapters come from 第N回/章/节/卷 lines in the text.
    headings: tuple[Heading, ...] = ()
    # Offset where each page (a PDF page, a PPTX slide) starts (page 1 at index 0); empty for
    # formats without pages.
    page_starts: tuple[int, ...] = ()
    warnings: list[str] = field(default_factory=list)

    def blocks(self) -> Iterator[str]:
        """The extracted text in order, in blocks (never ``""``)."""
        for block in self.read_blocks():
            if block:
                yield block

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding the character at ``offset`` (None without pages)."""
        if not self.page_starts:
            return None
        return max(1, bisect.bisect_right(self.page_starts, offset))

    def chapters(self, *, length: int) -> list[Chapter] | None:
        """Chapters from the structural headings (the text is ``length`` characters long); None
        where the text's own 第N回 lines decide."""
        return chapters_from_headings(self.headings, length=length) if self.headings else None

    def sections(self, chapters: list[Chapter]) -> list[Chapter]:
        """``chapters`` cut again at every lower heading (each piece keeps its chapter's number and
        title): chunks never run across a section heading, so each cites one section."""
        cuts = [h for h in self.headings if h.level != chapter_level(self.headings)]
        if not cuts:
            return chapters
        pieces: list[Chapter] = []
        for chapter in chapters:
            start = chapter.start
            for heading in cuts:
                if chapter.start < heading.start < chapter.end:
                    line = heading.start if heading.line_start is None else heading.line_start
                    pieces.append(Chapter(chapter.number, chapter.title, chapter.heading, start, max(start, line)))
                    start = heading.start
            pieces.append(Chapter(chapter.number, chapter.title, chapter.heading, start, chapter.end))
        return pieces

    def locator(self, chapters: list[Chapter]) -> Callable[[int, int], Place]:
        """``place(start, end)`` for the chunks of this document split into ``chapters``."""
        sections = SectionIndex(self.headings, chapters)

        def place(start: int, end: int) -> Place:
            last = max(start, end - 1)
            page = self.page_at(start)
            page_end = self.page_at(last)
            # The heading path in force at the chunk's end: the same as at its start, since chunks
            # never cross a section heading, except for a chapter that opens with its volume's
            # heading (第二卷 云涌 then 第三章 再起), which cites the chapter under the volume.
            return Place(page, page_end if page_end != page else None, sections.at(last))

        return place


# Word's built-in heading styles (DOCX, DOC), by name in English and as Chinese Word names them.
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-3])$", re.I)


def heading_style_level(name: str) -> int | None:
    """The heading level a Word paragraph style of this name stands for ("Heading 2", "标题 1"),
    or None: the one rule of the DOCX and DOC loaders (levels 1-3; "Title" is not a chapter)."""
    match = _HEADING_STYLE.match(name)
    return int(match.group(1)) if match else None


_CONTENTS_STYLE = re.compile(r"^(?:toc|目录)\s*\d$", re.I)


def is_contents_style(name: str) -> bool:
    """Whether a Word paragraph style of this name holds a table of contents' entries ("TOC 1", "目录 2"):
    they repeat the headings, and the DOCX and DOC loaders leave them out."""
    return bool(_CONTENTS_STYLE.match(name))


def text_blocks(parts: list[str]) -> Callable[[], Iterator[str]]:
    """``read_blocks`` for text already extracted as ``parts``: blocks of about BLOCK_CHARS."""
    return lambda: gathered(parts)


def gathered(pieces: Iterable[str]) -> Iterator[str]:
    """``pieces`` joined into blocks of about BLOCK_CHARS (lines, paragraphs: few, larger blocks)."""
    pending: list[str] = []
    size = 0
    for piece in pieces:
        pending.append(piece)
        size += len(piece)
        if size >= BLOCK_CHARS:
            yield "".join(pending)
            pending, size = [], 0
    if pending:
        yield "".join(pending)


def chapter_level(headings: Iterable[Heading]) -> int | None:
    """The level whose headings are the chapters: the shallowest one used more than once (a
    book's single ``<h1>`` title is not a chapter), else the shallowest one. A level of volumes
    only (第N卷) gives way to a deeper repeated level: in 第一卷 > 第一章 the 章 are the chapters,
    as in a text file (``kb.splitting.VOLUME_UNIT``)."""
    headings = list(headings)
    counts: dict[int, int] = {}
    for heading in headings:
        counts[heading.level] = counts.get(heading.level, 0) + 1
    if not counts:
        return None
    repeated = sorted(level for level, count in counts.items() if count > 1)
    for level in repeated[:-1]:
        if not all(is_volume(h.title) for h in headings if h.level == level):
            return level
    return repeated[-1] if repeated else min(counts)


def is_volume(title: str) -> bool:
    """A heading that numbers a volume (``第二卷 云涌``)."""
    match = CHAPTER_HEADING.match(" ".join(title.split()))
    return match is not None and match.group("unit") == VOLUME_UNIT


def chapter_for_heading(title: str, *, ordinal: int, start: int) -> Chapter:
    """A chapter for a structural heading: ``第二章 休假`` gets number 2, heading ``第二章`` and
    title ``休假`` (as the text scanner would); other headings are numbered in order and keep
    their whole text as title."""
    title = " ".join(title.split())
    match = CHAPTER_HEADING.match(title)
    if match and len(match.group("title") or "") <= 60:
        heading = "".join(match.group("heading").split())
        return Chapter(chinese_number(match.group("num")), (match.group("title") or "").strip() or heading, heading, start, -1)
    return Chapter(ordinal, title, None, start, -1)


def chapters_from_headings(headings: tuple[Heading, ...], *, length: int) -> list[Chapter]:
    """The document's chapters, each to the next one's heading line (the last to ``length``),
    after a preamble where text comes before the first chapter heading."""
    level = chapter_level(headings)
    tops = [h for h in headings if h.level == level]
    lines = _chapter_lines(headings, level)
    chapters = [chapter_for_heading(h.title, ordinal=i + 1, start=h.start) for i, h in enumerate(tops)]
    starts = [min(c.start, line) for c, line in zip(chapters, lines)]  # a volume's heading starts its first chapter
    out = [Chapter(c.number, c.title, c.heading, start, end)
           for c, start, end in zip(chapters, starts, lines[1:] + [length])]
    first = lines[0]
    if first > 0:
        out.insert(0, Chapter(None, None, None, 0, first))
    return out


def _chapter_lines(headings: tuple[Heading, ...], level: int | None) -> list[int]:
    """Where each chapter (heading of ``level``) begins: its heading's line, or the line of the
    volume heading(s) right before it (volumes over chapters fold into the chapter after them)."""
    lines: list[int] = []
    volume_line: int | None = None
    for heading in headings:
        line = heading.start if heading.line_start is None else heading.line_start
        if heading.level == level:
            lines.append(line if volume_line is None else volume_line)
            volume_line = None
        elif level is not None and heading.level < level and is_volume(heading.title) and volume_line is None:
            volume_line = line
    return lines


class SectionIndex:
    """``at(offset)``: the heading path in force there, e.g. ``"第三章 > 3.2 安装"`` (the text's
    own chapter label, ``"第2章 休假"``, where the document has no structural headings)."""

    def __init__(self, headings: tuple[Heading, ...], chapters: list[Chapter]) -> None:
        from kb.citation import chapter_label

        self._starts: list[int] = []
        self._paths: list[str | None] = []
        if headings:
            path: list[Heading] = []
            for heading in headings:
                while path and path[-1].level >= heading.level:
                    path.pop()
                path.append(heading)
                self._starts.append(heading.start)
                self._paths.append(" > ".join(h.title for h in path))
        else:
            for c in chapters:
                self._starts.append(c.start)
                self._paths.append(chapter_label(c.number, c.title, c.heading) or None)

    def at(self, offset: int) -> str | None:
        index = bisect.bisect_right(self._starts, offset) - 1
        return self._paths[index] if index >= 0 else None
