"""Cut Chinese documents into chapters and retrievable chunks with exact character offsets.

Novels are split at chapter headings (``第一百三回``, ``第十二章``, ``第３节``, ``第二卷`` on a line
of their own) so that no chunk ever mixes two chapters; inside a chapter, chunks are packed
from whole sentences (ending in 。！？；… plus any closing quotes). Text before the first
heading is the preamble, a section with ``chapter=None``. Documents without headings fall
back to langchain's RecursiveCharacterTextSplitter with Chinese separators. Every chunk keeps
``start``/``end`` offsets with ``text[start:end] == chunk.text``.

Big files are split as a stream of text blocks (:class:`ChapterScanner`, :func:`iter_chunks`):
memory follows the longest section, capped at ``SECTION_LIMIT`` characters, not the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from langchain_text_splitters import RecursiveCharacterTextSplitter

_SPACE = "[ \\t\\u3000]"
# Chinese numerals of chapter headings: the common ones, the financial (大写) forms some books print
# (第壹章, 第拾贰回) and 廿/卅/卌 (20/30/40) of older books (第廿一回). kb.chinese_number reads them all,
# and the chapter-range parser (chains.summarize) takes the same characters.
CN_NUMERAL_CHARS = "零〇一二两三四五六七八九十百千万壹贰貳叁參肆伍陆陸柒捌玖拾佰仟萬廿卅卌"
_CN_DIGITS = CN_NUMERAL_CHARS
# What 第N numbers in a heading: 回/章/节 (節 in traditional script), 话/話 (web and light novels'
# episodes) and 卷 (volumes). The chapter-range parser (chains.summarize) reads the same units.
CHAPTER_UNITS = "回章节節话話卷"
# 卷 (a volume) is a chapter only where nothing finer numbers the text: a web novel's 第一卷 over
# its 第一章..第十章 is a heading over chapters, not chapter 1 beside 第一章 (ChapterScanner).
VOLUME_UNIT = "卷"
# Before 第N章 on its line: a Markdown marker, or 正文 / 正文卷 (the body's label in web novels
# exported from their sites: "正文 第一章 少年"), kept out of the heading like the marker.
CHAPTER_HEADING = re.compile(
    rf"^{_SPACE}*(?:#{{1,6}}{_SPACE}*|正文卷?{_SPACE}*)?"
    rf"(?P<heading>第{_SPACE}*(?P<num>[0-9０-９]+|[{_CN_DIGITS}]+){_SPACE}*(?P<unit>[{CHAPTER_UNITS}]))"
    rf"(?:(?:{_SPACE}|[:：.．、])+(?P<title>[^\n]*?))?{_SPACE}*\r?$",
    re.MULTILINE,
)
# Unnumbered sections of a numbered book (序章, 楔子, 番外三 重逢, 尾声, 后记, 完本感言; a part's 上卷,
# 下册), on a line of their own: sections with no chapter number, so their text is not cited or
# summarized as the numbered chapter before them. Only in a text that has 第N章 headings too.
NAMED_SECTIONS = (
    "序章", "序言", "序幕", "楔子", "引子", "尾声", "终章", "后记", "完本感言", "上架感言",
    # parts of a book whose chapters restart their numbers in each (上卷 第一章..., 下卷 第一章...)
    "上卷", "中卷", "下卷", "上册", "中册", "下册", "上部", "中部", "下部", "上篇", "中篇", "下篇",
)
NAMED_HEADING = re.compile(
    rf"^{_SPACE}*(?:#{{1,6}}{_SPACE}*|正文卷?{_SPACE}*)?"
    rf"(?P<heading>{'|'.join(NAMED_SECTIONS)}|番外篇?(?:[0-9０-９]+|[{_CN_DIGITS}]+)?)"
    rf"(?:(?:{_SPACE}|[:：.．、])+(?P<title>[^\n]*?))?{_SPACE}*\r?$",
    re.MULTILINE,
)
# A heading line longer than this is prose that happens to start with 第N回.
MAX_TITLE_CHARS = 60
# A line longer than this is never a heading (however many spaces lead it): a streamed scan
# never has to hold more than this much of a line.
MAX_HEADING_LINE = 4096
# A chapter (or a document without chapters) longer than this is chunked in sections of at
# most this many characters, cut at a line or sentence end: the memory a split needs.
SECTION_LIMIT = 200_000
# Sentence ends, with closing quotes/brackets that belong to the sentence; a line break also ends one.
SENTENCE_END = re.compile(r"(?:[。！？；!?;]|…+|\.{3,})+[”’」』\"'）)》]*|\n+")
_NON_SPACE = re.compile(r"\S")
# Where an over-long sentence may be cut, best first.
_SOFT_BREAKS = re.compile(r"[，、：,:]+[”’」』\"'）)]*")
CHINESE_SEPARATORS: list[str] = ["\n\n", "\n", "。", "！", "？", "；", "…", "，", "、", " ", ""]

_CN_VALUES = {
    "零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
    "壹": 1, "贰": 2, "貳": 2, "叁": 3, "參": 3, "肆": 4, "伍": 5, "陆": 6, "陸": 6, "柒": 7, "捌": 8, "玖": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000, "拾": 10, "佰": 100, "仟": 1000}
_CN_TENS = {"廿": 20, "卅": 30, "卌": 40}  # one character for 二十/三十/四十
_CN_MYRIADS = "万萬"


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
    # Where it lies (kb.loaders.Place): 1-based pages of paged formats, the heading path.
    page: int | None = None
    page_end: int | None = None  # the last page where the chunk spans pages, else None
    section: str | None = None  # e.g. "第三章 > 3.2 安装", or the chapter's label "第2章 休假"


def chinese_number(numeral: str) -> int:
    """``一百三`` -> 103, ``一百十八`` -> 118, ``十二`` -> 12, ``１２`` -> 12 (as novels number chapters);
    ``壹佰零叁`` -> 103 and ``廿一`` -> 21 too."""
    if numeral.isdigit():
        return int(numeral)
    total = section = digit = 0
    for char in numeral:
        if char in _CN_VALUES:
            digit = _CN_VALUES[char]
        elif char in _CN_TENS:
            section += _CN_TENS[char]
            digit = 0
        elif char in _CN_MYRIADS:
            total = (total + section + digit) * 10000
            section = digit = 0
        else:
            section += (digit or 1) * _CN_UNITS[char]
            digit = 0
    return total + section + digit


class ChapterScanner:
    """Finds chapter headings in text fed block by block; :meth:`finish` gives the sections.

    Feeding a text in any blocks gives the same sections as feeding it whole. Only the current
    incomplete line is held (at most ``MAX_HEADING_LINE`` characters of it).
    """

    def __init__(self) -> None:
        self._line = ""  # the incomplete last line, while it may still be a heading
        self._line_start = 0  # offset of ``_line`` (or of the over-long line being skipped)
        self._skipping = False  # inside a line longer than MAX_HEADING_LINE
        self._length = 0
        self._text_before_first = False  # non-space text before the first heading
        self._headings: list[tuple[int, Chapter]] = []  # (line start, chapter without its end)
        self._bodies: list[bool] = []  # per heading: non-space text follows it before the next

    def feed(self, block: str) -> None:
        """Scan the next piece of the text."""
        self._length += len(block)
        newline = block.rfind("\n")
        if newline < 0:
            self._extend_line(block)
            return
        if self._skipping:
            complete, base = block[: newline + 1], self._length - len(block)
            self._note_text(complete[: complete.find("\n")])
            first = complete.find("\n") + 1
            self._scan(complete[first:], base + first)
        else:
            self._scan(self._line + block[: newline + 1], self._line_start)
        self._line, self._skipping = "", False
        self._line_start = self._length - (len(block) - newline - 1)
        self._extend_line(block[newline + 1 :])

    def finish(self) -> list[Chapter]:
        """The sections of everything fed: an optional preamble then one per heading (``[]``
        when there is no heading at all)."""
        if not self._skipping:
            self._scan(self._line, self._line_start)
        self._line = ""
        headings = self._without_contents()
        if not any(chapter.number is not None for _, chapter in headings):
            return []  # 后记 or 引子 alone does not make a book of chapters
        contents_first = headings[0] is not self._headings[0]
        headings = _volumes_folded(headings)
        sections: list[Chapter] = []
        if self._text_before_first or contents_first:  # text, or contents, first
            sections.append(Chapter(number=None, title=None, heading=None, start=0, end=headings[0][0]))
        for i, (_, chapter) in enumerate(headings):
            end = headings[i + 1][0] if i + 1 < len(headings) else self._length
            sections.append(Chapter(chapter.number, chapter.title, chapter.heading, chapter.start, end))
        return sections

    def _without_contents(self) -> list[tuple[int, Chapter]]:
        """The headings without those of a table of contents: a heading line with nothing under
        it (or the contents' last line, with a preface under it) whose heading and title come
        again later over a chapter's text (web novels in .txt start with a 目录 of every chapter
        line). Its lines join the section before (the preamble, for a table at the top); kept,
        each would be a chapter of one line, and every chapter number would be there twice."""
        last_with_text: dict[tuple[str | None, str | None], int] = {}
        for i, (_, chapter) in enumerate(self._headings):
            if self._bodies[i]:
                last_with_text[(chapter.heading, chapter.title)] = i
        contents: set[int] = set()
        for i, (_, chapter) in enumerate(self._headings):
            again = last_with_text.get((chapter.heading, chapter.title), -1) > i
            if again and (not self._bodies[i] or i - 1 in contents):
                contents.add(i)
        return [heading for i, heading in enumerate(self._headings) if i not in contents]

    def _extend_line(self, piece: str) -> None:
        if self._skipping:
            self._note_text(piece)
            return
        self._line += piece
        if len(self._line) > MAX_HEADING_LINE:
            self._note_text(self._line)
            self._line, self._skipping = "", True

    def _note_text(self, text: str) -> None:
        if self._headings:
            if not self._bodies[-1] and _NON_SPACE.search(text):
                self._bodies[-1] = True
        elif not self._text_before_first and _NON_SPACE.search(text):
            self._text_before_first = True

    def _scan(self, lines: str, offset: int) -> None:
        pos = 0
        matches = sorted([*CHAPTER_HEADING.finditer(lines), *NAMED_HEADING.finditer(lines)], key=lambda m: m.start())
        for match in matches:
            if len(match.group("title") or "") > MAX_TITLE_CHARS or match.end() - match.start() > MAX_HEADING_LINE:
                continue
            self._note_text(lines[pos : match.start()])
            pos = match.end()
            heading = re.sub(rf"{_SPACE}+", "", match.group("heading"))
            title = " ".join((match.group("title") or "").split()) or heading
            number = chinese_number(match.group("num")) if match.re is CHAPTER_HEADING else None
            chapter = Chapter(number, title, heading, offset + match.start("heading"), -1)
            self._headings.append((offset + match.start(), chapter))
            self._bodies.append(False)
        self._note_text(lines[pos:])


def _volumes_folded(headings: list[tuple[int, Chapter]]) -> list[tuple[int, Chapter]]:
    """Where 卷 headings stand over finer ones (第一卷 ... 第一章 ... 第二卷 ... 第十一章), each
    volume's heading line (and any text of its own) starts the chapter after it instead of being
    a chapter: its number would collide with the chapters' own (two "chapter 1"s), and ranges
    and citations count chapters. A text numbered only in 卷 keeps them as its chapters."""
    units = {chapter.heading[-1] for _, chapter in headings if chapter.number is not None and chapter.heading}
    if VOLUME_UNIT not in units or units == {VOLUME_UNIT}:
        return headings
    folded: list[tuple[int, Chapter]] = []
    volume_start: int | None = None  # line start of the volume heading(s) waiting for a chapter
    for line_start, chapter in headings:
        if chapter.number is not None and chapter.heading and chapter.heading[-1] == VOLUME_UNIT:
            volume_start = line_start if volume_start is None else volume_start
            continue
        if volume_start is not None:
            line_start, chapter = volume_start, replace(chapter, start=volume_start)
            volume_start = None
        folded.append((line_start, chapter))
    return folded  # a volume heading after the last chapter stays in that chapter's text


def split_chapters(text: str) -> list[Chapter]:
    """The sections of ``text``: an optional preamble (``number=None``) then one per heading.

    Returns ``[]`` when the text has no chapter headings at all.
    """
    scanner = ChapterScanner()
    scanner.feed(text)
    return scanner.finish()


def split_document(text: str, *, chunk_size: int, chunk_overlap: int) -> list[Chunk]:
    """Chunks of a whole document: per chapter if it has headings, else the recursive fallback."""
    return list(iter_chunks([text], split_chapters(text), chunk_size=chunk_size, chunk_overlap=chunk_overlap))


def iter_chunks(
    blocks: Iterable[str], chapters: list[Chapter], *, chunk_size: int, chunk_overlap: int
) -> Iterator[Chunk]:
    """Chunks of a document given as text blocks, in reading order, holding one section at a time.

    ``chapters`` are the document's sections (:class:`ChapterScanner` over the same text, e.g.
    in an earlier pass); ``[]`` means the recursive fallback. Every block is consumed, even
    past the last chunk, so a caller hashing the blocks sees the whole text.
    """
    _check_sizes(chunk_size, chunk_overlap)
    window = _TextWindow(blocks)
    if chapters:
        for chapter in chapters:
            for start, end in _sections(window, chapter.start, chapter.end, breaks=_LINE_BREAKS):
                for s, e in pack_sentences(
                    window.text, start - window.base, end - window.base, chunk_size=chunk_size, chunk_overlap=chunk_overlap
                ):
                    yield Chunk(window.text[s:e], window.base + s, window.base + e, chapter.number, chapter.title)
    else:
        for start, end in _sections(window, 0, None, breaks=_PARAGRAPH_BREAKS):
            segment = window.text[start - window.base : end - window.base]
            for chunk in split_plain(segment, chunk_size=chunk_size, chunk_overlap=chunk_overlap):
                yield Chunk(chunk.text, start + chunk.start, start + chunk.end, None, None)
    window.read_to(None)


class _TextWindow:
    """The part of a streamed text still needed: ``text`` starts at offset ``base``."""

    def __init__(self, blocks: Iterable[str]) -> None:
        self._blocks = iter(blocks)
        self.text = ""
        self.base = 0
        self.eof = False

    @property
    def end(self) -> int:
        return self.base + len(self.text)

    def read_to(self, offset: int | None) -> None:
        """Read blocks until the window reaches ``offset`` (None: the end of the text)."""
        pieces = [self.text]
        end = self.end
        while not self.eof and (offset is None or end < offset):
            block = next(self._blocks, None)
            if block is None:
                self.eof = True
            else:
                pieces.append(block)
                end += len(block)
        if len(pieces) > 1:
            self.text = "".join(pieces)

    def drop_before(self, offset: int) -> None:
        """Forget text before ``offset`` (lazily: copying is paid only when it frees half)."""
        cut = offset - self.base
        if cut > 0 and cut * 2 >= len(self.text):
            self.text = self.text[cut:]
            self.base = offset


_LINE_BREAKS = (re.compile(r"\n"), SENTENCE_END)
_PARAGRAPH_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), SENTENCE_END)


def _sections(
    window: _TextWindow, start: int, end: int | None, *, breaks: tuple[re.Pattern[str], ...]
) -> Iterator[tuple[int, int]]:
    """``[start, end)`` (None: to the end of the text) in pieces of at most ``SECTION_LIMIT``
    characters, each cut after the last match of the first pattern in ``breaks`` that occurs in
    its second half (else at the limit). The window holds each piece while it is yielded."""
    while True:
        window.read_to(start + SECTION_LIMIT + 1 if end is None else min(end, start + SECTION_LIMIT + 1))
        stop = window.end if end is None else min(end, window.end)
        if stop - start <= SECTION_LIMIT:
            if stop > start:
                yield start, stop
            window.drop_before(stop)
            return
        cut = _last_break(window, start + SECTION_LIMIT // 2, start + SECTION_LIMIT, breaks)
        yield start, cut
        window.drop_before(cut)
        start = cut


def _last_break(window: _TextWindow, low: int, high: int, breaks: tuple[re.Pattern[str], ...]) -> int:
    """The offset after the last break in ``[low, high)``, by the first pattern that has one."""
    text, base = window.text, window.base
    for pattern in breaks:
        last = None
        for last in pattern.finditer(text, low - base, high - base):
            pass
        if last is not None and last.end() > low - base:
            return base + last.end()
    return high


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
    pieces = [piece for piece in splitter.split_text(text) if piece.strip()]
    starts = _locate_pieces(text, pieces, chunk_overlap=chunk_overlap)
    return [Chunk(piece, start, start + len(piece), None, None) for piece, start in zip(pieces, starts)]


def _locate_pieces(text: str, pieces: list[str], *, chunk_overlap: int) -> list[int]:
    """Where each of the splitter's pieces starts in ``text``.

    Pieces come in order, each made of the splitter's consecutive splits: a piece starts inside
    the previous one (the overlap, at most ``chunk_overlap`` characters back, or where the
    previous one started when it repeats all of a short one and extends it) or after it with
    only whitespace between. Repeated or periodic text has several copies of a piece in that
    window; neither the first copy (a short repeated line inside the overlap) nor the last one
    (periodic text drifts) is always right. So this is a depth-first search over the copies,
    first copy first, for placements that leave no text outside every piece; remembering the
    placements that failed keeps it linear in practice.
    """
    failed: set[tuple[int, int]] = set()
    starts: list[int] = []
    stack = [_candidate_starts(text, pieces[0], 0, 0, 0)] if pieces else []
    while stack:
        index = len(starts)
        start = next((s for s in stack[-1] if (index, s) not in failed), None)
        if start is None:
            stack.pop()
            if starts:
                failed.add((index - 1, starts.pop()))
            continue
        starts.append(start)
        end = start + len(pieces[index])
        if index + 1 == len(pieces):
            if _NON_SPACE.search(text, end) is None:
                return starts
            failed.add((index, starts.pop()))
            continue
        search_from = max(start + 1, end - chunk_overlap)
        stack.append(_candidate_starts(text, pieces[index + 1], search_from, start, end))
    if pieces:
        raise AssertionError("text splitter returned text that is not in the document")
    return starts


def _candidate_starts(text: str, piece: str, search_from: int, previous_start: int, previous_end: int) -> Iterator[int]:
    """Offsets where ``piece`` may start after a piece at ``[previous_start, previous_end)``:
    copies from ``search_from`` up to the next non-space character, then earlier ones back
    to ``previous_start``."""
    following = _NON_SPACE.search(text, previous_end)
    latest = following.start() if following else len(text)
    yield from _copies(text, piece, search_from, latest)
    yield from _copies(text, piece, previous_start, min(search_from - 1, latest))


def _copies(text: str, piece: str, low: int, high: int) -> Iterator[int]:
    """Offsets in ``[low, high]`` where ``text`` has a copy of ``piece``, ascending."""
    position = text.find(piece, low, high + len(piece))
    while position >= 0:
        yield position
        position = text.find(piece, position + 1, high + len(piece))


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
