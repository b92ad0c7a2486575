"""Download sites' lines in novels: found in one pass, dropped as the text streams.

Novels saved from web-novel sites (as .txt, or an EPUB/HTML/DOCX made from one) carry the
site's lines through the whole book ("笔趣阁
www.biquge.com 最快更新", "本章未完，请点击下一页继续阅读", "手机阅读请访问 m.xxx.cc"). Indexed,
they become chunks that match every question about "最新章节" and sources full of addresses.

A *site line* is a short line that carries a web address or a phrase such sites stamp, and
whose key (spaces removed, digits folded: page and chapter numbers differ) occurs at least
``MIN_REPEATS`` times in the file. A book's own prose never repeats such a line; a preface
that names its source once, or a manual's one support address, stays. Chapter heading lines
are never dropped, whatever they carry, and neither is anything in a file where such lines
would be a third of it (a saved list of links).

:func:`drop_site_lines` applies this to a loaded document of a prose format (``PROSE_FORMATS``;
tables and slides are data, PDFs lose their page headers and footers in ``kb.loaders.layout``):
its text comes without those lines, and its headings and page starts move with the text, so
every offset downstream (chunks, citations) is into the text without them.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from kb.loaders.document import LoadedDocument, gathered
from kb.splitting import CHAPTER_HEADING

logger = logging.getLogger(__name__)

# The formats whose text is prose a site could have stamped (not tables, slides or PDFs).
PROSE_FORMATS = frozenset({"text", "markdown", "html", "epub", "mobi", "docx", "doc", "odt", "rtf"})

# Longer lines are prose even when they name a site (a paragraph that quotes an address).
MAX_SITE_LINE = 120
# A marked line is the site's only when its key comes back this often.
MIN_REPEATS = 3
# Site lines are a book's noise, never most of it: a file whose marked lines would be more than
# this share of its lines (a saved list of links, https://www.zhihu.com/question/N per line) is
# left as it is.
MAX_SHARE = 1 / 3
# Distinct marked keys counted at most (a hostile file full of distinct addresses).
_MAX_KEYS = 20_000
# Lines are held at most this long while the text streams (longer ones pass in pieces).
_MAX_HELD = MAX_SITE_LINE * 8
_SPACES = re.compile(r"[\s\u3000]+")
_DIGITS = re.compile(r"\d+")
# A web address (ASCII or full-width, "w w w . x x . c o m" once spaces are gone) or a phrase
# the download sites stamp on every page. A domain ends where no letter follows, not at \b: in
# "biquge.cc阅读" Chinese is a word character too.
_MARKER = re.compile(
    r"https?://|www\.|ｗｗｗ"
    r"|[a-z0-9]\.(?:com|net|org|cc|cn|la|tw|info|me|co|xyz|top|vip|io|so|tv)(?![a-z])"
    r"|[．.](?:ｃｏｍ|ｎｅｔ|ｃｃ|ｏｒｇ)"
    r"|本章未完|点击下一页|请记住本(?:书|站)|首发域名|最快更新|最新章节|手机(?:用户)?(?:阅读|请访问|请浏览)"
    r"|无弹窗|天才一秒记住|本站地址|加入书签|笔趣阁|顶点小说",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SiteLines:
    """The keys of one file's site lines, with how many lines each dropped and the first line
    seen of each (for the report)."""

    counts: dict[str, int]
    examples: dict[str, str]

    def __bool__(self) -> bool:
        return bool(self.counts)

    def is_site_line(self, line: str) -> bool:
        key = site_key(line)
        return key is not None and key in self.counts and not CHAPTER_HEADING.match(line)

    def drops(self, piece: str, whole: bool) -> bool:
        """Whether a piece of the streamed text (``_lines``) is left out: a whole site line."""
        return whole and self.is_site_line(piece)

    def warning(self, name: str) -> str:
        """One line for the build's report: how many lines went, and the commonest."""
        total = sum(self.counts.values())
        commonest = max(self.counts, key=self.counts.__getitem__)
        return f"{name}: dropped {total} repeated download-site lines (such as {self.examples[commonest]!r})"


def site_key(line: str) -> str | None:
    """The counting key of a short marked line (spaces out, digits folded to 0); None for
    every other line."""
    squeezed = _SPACES.sub("", line)
    if not squeezed or len(squeezed) > MAX_SITE_LINE or not _MARKER.search(squeezed):
        return None
    return _DIGITS.sub("0", squeezed)


def drop_site_lines(document: LoadedDocument) -> LoadedDocument:
    """``document`` without its site lines (itself where it has none or is not prose), with
    its headings and page starts moved to the text that is left; the build's report says so."""
    if document.format not in PROSE_FORMATS:
        return document
    site_lines = find_site_lines(document.blocks())
    if not site_lines:
        return document
    moved = _Shift(_dropped_spans(document.blocks(), site_lines))
    headings = tuple(
        replace(h, start=moved(h.start), line_start=None if h.line_start is None else moved(h.line_start))
        for h in document.headings
    )
    warning = site_lines.warning(document.path.name)
    logger.warning(warning)
    return replace(
        document,
        read_blocks=without_site_lines(document.read_blocks, site_lines),
        headings=headings,
        page_starts=tuple(moved(start) for start in document.page_starts),
        warnings=[*document.warnings, warning],
    )


class _Shift:
    """Where an offset of the whole text lands in the text without the dropped spans (an offset
    inside a dropped span lands where the span was)."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._removed: list[int] = [0]  # characters removed before span i
        for start, length in spans:
            self._starts.append(start)
            self._ends.append(start + length)
            self._removed.append(self._removed[-1] + length)

    def __call__(self, offset: int) -> int:
        i = bisect.bisect_right(self._starts, offset) - 1  # the last span starting at or before it
        if i < 0:
            return offset
        if offset < self._ends[i]:
            return self._starts[i] - self._removed[i]
        return offset - self._removed[i + 1]


def _dropped_spans(blocks: Iterable[str], site_lines: SiteLines) -> Iterator[tuple[int, int]]:
    """(offset, length) of each line :func:`without_site_lines` leaves out, line break included."""
    offset = 0
    for piece, whole in _lines(blocks, keep_ends=True):
        if site_lines.drops(piece, whole):
            yield offset, len(piece)
        offset += len(piece)


def find_site_lines(blocks: Iterable[str]) -> SiteLines:
    """Count the marked lines of a streamed text; keep the keys seen ``MIN_REPEATS`` times
    (heading lines are not counted), unless they would be more than ``MAX_SHARE`` of its lines."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    lines = 0
    for line, whole in _lines(blocks):
        lines += bool(whole and line.strip())
        key = site_key(line) if whole else None
        if key is not None and (key in counts or len(counts) < _MAX_KEYS) and not CHAPTER_HEADING.match(line):
            counts[key] += 1
            examples.setdefault(key, line.strip())
    kept = {key: n for key, n in counts.items() if n >= MIN_REPEATS}
    if sum(kept.values()) > MAX_SHARE * lines:  # a list of links, a site's own notes: the lines are the text
        kept = {}
    return SiteLines(kept, {key: examples[key] for key in kept})


def without_site_lines(read_blocks: Callable[[], Iterable[str]], site_lines: SiteLines) -> Callable[[], Iterator[str]]:
    """``read_blocks`` with the site lines (and their line breaks) left out."""

    def blocks() -> Iterator[str]:
        pieces = _lines(read_blocks(), keep_ends=True)
        return gathered(piece for piece, whole in pieces if not site_lines.drops(piece, whole))

    return blocks


def _lines(blocks: Iterable[str], *, keep_ends: bool = False) -> Iterator[tuple[str, bool]]:
    """The lines of a streamed text (with or without their ``\n``), each with whether it is
    whole. Only short lines are held: a line past ``_MAX_HELD`` characters (never a site line)
    is passed on in pieces marked not whole, up to and including its end."""
    carry = ""
    long_line = False  # carry is the rest of a line whose head was already passed on
    for block in blocks:
        pieces = (carry + block).split("\n")
        carry = pieces.pop()
        for piece in pieces:
            yield (piece + "\n" if keep_ends else piece), not long_line
            long_line = False
        if len(carry) > _MAX_HELD:
            yield carry, False
            carry, long_line = "", True
    if carry:
        yield carry, not long_line
