"""Cut Chinese documents into chapters and retrievable chunks with exact character offsets.

Novels are split at chapter headings (``第一百三回``, ``第十二章``, ``第３节``, ``第二卷`` on a line
of their own) so that no chunk ever mixes two chapters; inside a chapter, chunks are packed
from whole sentences (ending in 。！？；… plus any closing quotes). Text before the first
heading is the preamble, a section with ``chapter=None``. Documents without headings fall
back to langchain's RecursiveCharacterTextSplitter with Chinese separators. Every chunk keeps
``start``/``end`` offsets with ``text[start:end] == chunk.text``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter

_SPACE = "[ \\t\\u3000]"
_CN_DIGITS = "零〇一二两三四五六七八九十百千万"
CHAPTER_HEADING = re.compile(
    rf"^{_SPACE}*(?:#{{1,6}}{_SPACE}*)?"
    rf"(?P<heading>第{_SPACE}*(?P<num>[0-9０-９]+|[{_CN_DIGITS}]+){_SPACE}*(?P<unit>[回章节卷]))"
    rf"(?:(?:{_SPACE}|[:：.．、])+(?P<title>[^\n]*?))?{_SPACE}*\r?$",
    re.MULTILINE,
)
# A heading line longer than this is prose that happens to start with 第N回.
MAX_TITLE_CHARS = 60
# Sentence ends, with closing quotes/brackets that belong to the sentence; a line break also ends one.
SENTENCE_END = re.compile(r"(?:[。！？；!?;]|…+|\.{3,})+[”’」』\"'）)》]*|\n+")
_NON_SPACE = re.compile(r"\S")
# Where an over-long sentence may be cut, best first.
_SOFT_BREAKS = re.compile(r"[，、：,:]+[”’」』\"'）)]*")
CHINESE_SEPARATORS: list[str] = ["\n\n", "\n", "。", "！", "？", "；", "…", "，", "、", " ", ""]

_CN_VALUES = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}


@dataclass(frozen=True)
class Chapter:
    """One section of a document: a chapter (from its heading line to the next) or the preamble."""

    number: int | None  # None for the preamble (text before the first heading)
    title: str | None  # the heading's title with whitespace collapsed, or the heading itself
    heading: str | None  # e.g. "第一回"; None for the preamble
    start: int  # offset of the heading line (0 for the preamble)
    end: int  # offset where the next section starts (len(text) for the last)


@dataclass(frozen=True)
class Chunk:
    """A retrievable piece of a document; ``text == source_text[start:end]``."""

    text: str
    start: int
    end: int
    chapter: int | None
    chapter_title: str | None


def chinese_number(numeral: str) -> int:
    """``一百三`` -> 103, ``一百十八`` -> 118, ``十二`` -> 12, ``１２`` -> 12 (as novels number chapters)."""
    if numeral.isdigit():
        return int(numeral)
    total = section = digit = 0
    for char in numeral:
        if char in _CN_VALUES:
            digit = _CN_VALUES[char]
        elif char == "万":
            total = (total + section + digit) * 10000
            section = digit = 0
        else:
            section += (digit or 1) * _CN_UNITS[char]
            digit = 0
    return total + section + digit


def split_chapters(text: str) -> list[Chapter]:
    """The sections of ``text``: an optional preamble (``number=None``) then one per heading.

    Returns ``[]`` when the text has no chapter headings at all.
    """
    headings = [m for m in CHAPTER_HEADING.finditer(text) if len(m.group("title") or "") <= MAX_TITLE_CHARS]
    if not headings:
        return []
    sections: list[Chapter] = []
    first = headings[0].start()
    if text[:first].strip():
        sections.append(Chapter(number=None, title=None, heading=None, start=0, end=first))
    for i, match in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        heading = re.sub(rf"{_SPACE}+", "", match.group("heading"))
        title = " ".join((match.group("title") or "").split()) or heading
        sections.append(
            Chapter(
                number=chinese_number(match.group("num")),
                title=title,
                heading=heading,
                start=match.start("heading"),
                end=end,
            )
        )
    return sections


def split_document(text: str, *, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of a whole document: per chapter if it has headings, else the recursive fallback."""
    _check_sizes(chunk_size, chunk_overlap)
    chapters = split_chapters(text)
    if not chapters:
        return split_plain(text, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    chunks: list[Chunk] = []
    for chapter in chapters:
        for start, end in pack_sentences(
            text, chapter.start, chapter.end, chunk_size=chunk_size, chunk_overlap=chunk_overlap
        ):
            chunks.append(Chunk(text[start:end], start, end, chapter.number, chapter.title))
    return chunks


def sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentences of ``text[start:end]`` as offset pairs, without surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    pos = start
    for match in SENTENCE_END.finditer(text, start, end):
        spans.extend(_strip_span(text, pos, match.end()))
        pos = match.end()
    spans.extend(_strip_span(text, pos, end))
    return spans


def pack_sentences(
    text: str, start: int, end: int, *, chunk_size: int, chunk_overlap: int
) -> list[tuple[int, int]]:
    """Greedy chunks of whole sentences, each at most ``chunk_size`` characters (unless a single
    clause is longer), the next one starting with the previous one's last sentences that fit
    in ``chunk_overlap`` characters."""
    pieces: list[tuple[int, int]] = []
    for s, e in sentence_spans(text, start, end):
        pieces.extend(_cut_long_span(text, s, e, chunk_size))
    chunks: list[tuple[int, int]] = []
    i, n = 0, len(pieces)
    while i < n:
        j = i
        while j + 1 < n and pieces[j + 1][1] - pieces[i][0] <= chunk_size:
            j += 1
        chunks.append((pieces[i][0], pieces[j][1]))
        if j + 1 >= n:
            break
        k = j + 1
        while k - 1 > i and pieces[j][1] - pieces[k - 1][0] <= chunk_overlap:
            k -= 1
        i = k
    return chunks


def split_plain(text: str, *, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of a document without chapter headings (RecursiveCharacterTextSplitter, Chinese separators)."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        separators=CHINESE_SEPARATORS,
        keep_separator="end",
        strip_whitespace=True,
    )
    chunks: list[Chunk] = []
    search_from = previous_start = previous_end = 0
    for piece in splitter.split_text(text):
        if not piece.strip():
            continue  # only below the smallest chunk size settings allow: nothing to retrieve
        # Pieces come in order, each made of the splitter's consecutive splits: it starts inside
        # the previous piece (the overlap, at most chunk_overlap characters back, or where the
        # previous one started when it repeats all of a short one and extends it) or after it
        # with only whitespace between. The last copy of the piece in that window is the one
        # the splitter cut: an earlier copy (repeated or periodic text) would leave the text
        # between it and the window's end in no chunk.
        following = _NON_SPACE.search(text, previous_end)
        latest = following.start() if following else len(text)
        start = _find_last(text, piece, search_from, latest)
        if start < 0:
            start = _find_last(text, piece, previous_start, latest)
        if start < 0:
            start = text.find(piece, search_from)
        if start < 0:
            start = text.find(piece, previous_start)
        if start < 0:
            raise AssertionError("text splitter returned text that is not in the document")
        chunks.append(Chunk(piece, start, start + len(piece), None, None))
        search_from = max(start + 1, start + len(piece) - chunk_overlap)
        previous_start, previous_end = start, start + len(piece)
    return chunks


def _find_last(text: str, piece: str, lowest: int, latest: int) -> int:
    """Where the last copy of ``piece`` starting in ``[lowest, latest]`` starts, or -1."""
    return text.rfind(piece, lowest, latest + len(piece))


def _strip_span(text: str, start: int, end: int) -> list[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if start < end else []


def _cut_long_span(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Split a sentence longer than ``limit`` at commas, else at ``limit`` characters."""
    if end - start <= limit:
        return [(start, end)]
    out: list[tuple[int, int]] = []
    pos = start
    while end - pos > limit:
        cut = pos + limit
        soft = [m.end() for m in _SOFT_BREAKS.finditer(text, pos, pos + limit) if m.end() > pos]
        if soft and soft[-1] - pos >= limit // 3:
            cut = soft[-1]
        out.extend(_strip_span(text, pos, cut))
        pos = cut
    out.extend(_strip_span(text, pos, end))
    return out


def _check_sizes(chunk_size: int, chunk_overlap: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive (got {chunk_size})")
    if not 0 <= chunk_overlap < chunk_size:
        raise ValueError(f"chunk_overlap must be at least 0 and below chunk_size {chunk_size} (got {chunk_overlap})")
