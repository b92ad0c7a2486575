"""Page text to running text, for PDF text layers and OCR alike: repeated page headers and
footers and bare page numbers removed, lines of a wrapped paragraph joined (without a space
between Chinese characters, none of a hyphen's "-" in a split Latin word), and the offset where
every page's text starts kept."""

from __future__ import annotations

import re

from kb.splitting import CHAPTER_HEADING, MAX_TITLE_CHARS, NAMED_HEADING

# A line that ends a sentence (the splitter's own sentence end): never joined to the next, so a
# kept line break falls where the splitter cuts anyway and chunks match the source text's.
_SENTENCE_END = re.compile(r"(?:[。！？；!?;]|…+|\.{3,})+[”’」』\"'）)》]*$")
_PAGE_NUMBER = re.compile(r"^[\s\-—–·•第页Pp.\[\]()（）]*\d+(?:\s*(?:/|of|共)\s*\d+)?[\s\-—–·•页頁.\[\]()（）]*$")
_DIGITS = re.compile(r"\d+")
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")
# A line at least this share of its page's longest line was wrapped (it ran to the margin).
FULL_LINE = 0.85
# Lines looked at for headers/footers at each end of a page, and the share of pages on which a
# line must recur there to be one.
_EDGE_LINES = 2
_REPEATED = 0.5
# Or the pages of a run on which it must recur, each at most this many after the one before.
_RUN = 3
_NEARBY = 2
_HEADING_KEY = "\u0002"  # marks the key of a chapter heading line


def remove_headers_and_footers(pages: list[list[str]]) -> list[list[str]]:
    """``pages`` (lines each) without bare page numbers and without running headers and footers:
    lines that recur (digits aside) at the top or bottom of at least half the pages (when there
    are 3 or more), or of 3 or more pages each at most 2 after the last (a book's left and right
    pages carry different headers: its title, the chapter's title). A line of digits and marks
    only (a table's row) is no header. A chapter heading at an edge goes where it repeats one
    just before it (the header of a chapter's pages names the chapter), and stays where it
    heads its text: the splitter must see each heading once."""
    keys = [[_edge_key(line) for line in lines] for lines in pages]
    repeated = _repeated_keys(keys)
    running = _running_headings(keys, repeated)
    out = []
    for page, lines in enumerate(pages):
        edge = _edge_indices(len(lines))
        furniture = {
            i for i in edge if (page, i) in running or _is_furniture(keys[page][i], lines[i], repeated, len(pages))
        }
        out.append([line for i, line in enumerate(lines) if i not in furniture])
    return out


def _edge_indices(count: int) -> set[int]:
    return set(range(min(_EDGE_LINES, count))) | set(range(max(0, count - _EDGE_LINES), count))


def _edge_key(line: str) -> str:
    """The line with digits folded (a header's page number); a chapter heading keeps its own
    number (第1章 and 第2章 heading their pages are no header) and is marked as one."""
    line = " ".join(line.split())
    match = CHAPTER_HEADING.match(line) or NAMED_HEADING.match(line)
    if match and len(match.group("title") or "") <= MAX_TITLE_CHARS:
        return _HEADING_KEY + match.group("heading") + _DIGITS.sub("#", line[match.end("heading") :])
    return _DIGITS.sub("#", line)


def _repeated_keys(keys: list[list[str]]) -> set[str]:
    """The keys (not headings') of the lines recurring at page edges as headers and footers do."""
    pages_of: dict[str, list[int]] = {}
    for page, page_keys in enumerate(keys):
        for key in {page_keys[i] for i in _edge_indices(len(page_keys))}:
            if not key.startswith(_HEADING_KEY) and any(char.isalpha() for char in key):
                pages_of.setdefault(key, []).append(page)
    threshold = max(_RUN, _REPEATED * len(keys))
    return {key for key, found in pages_of.items() if len(found) >= threshold or _runs_as_header(key, found)}


def _runs_as_header(key: str, pages: list[int]) -> bool:
    """A run of nearby pages carries the line, and it ends no sentence: a header names something
    (a chapter's title); a line of dialogue (“好。”) may well recur at the edges of a few pages."""
    return _longest_run(pages) >= _RUN and not _SENTENCE_END.search(key)


def _longest_run(pages: list[int]) -> int:
    """The most of ``pages`` (ascending) in a row, each at most _NEARBY after the one before."""
    best = run = 0
    for i, page in enumerate(pages):
        run = run + 1 if i and page - pages[i - 1] <= _NEARBY else 1
        best = max(best, run)
    return best


def _is_furniture(key: str, line: str, repeated: set[str], pages: int) -> bool:
    """Whether an edge line (not a heading) is a header, a footer or a page number."""
    return not key.startswith(_HEADING_KEY) and (key in repeated or bool(pages > 1 and _PAGE_NUMBER.match(line)))


def _running_headings(keys: list[list[str]], repeated: set[str]) -> set[tuple[int, int]]:
    """``(page, line)`` of the chapter headings at page edges that are running headers: the same
    heading heads text (so it is no table of contents' entry) elsewhere on the page, or heads
    text or runs as a header on one of the 2 pages before."""
    last_seen: dict[str, int] = {}
    running: set[tuple[int, int]] = set()
    for page, lines in enumerate(keys):
        heads = [i for i, key in enumerate(lines) if key.startswith(_HEADING_KEY) and _heads_text(lines, i, repeated)]
        found = [
            i
            for i in _edge_indices(len(lines))
            if lines[i].startswith(_HEADING_KEY)
            and (page - last_seen.get(lines[i], -_NEARBY - 1) <= _NEARBY
                 or any(lines[j] == lines[i] for j in heads if j != i))
        ]
        running.update((page, i) for i in found)
        last_seen.update((lines[i], page) for i in heads + found)
    return running


def _heads_text(keys: list[str], index: int, repeated: set[str]) -> bool:
    """Whether line ``index`` of a page is followed by text: a line that is no heading, no
    header or footer and no page number."""
    following = keys[index + 1] if index + 1 < len(keys) else ""
    return bool(following) and not following.startswith(_HEADING_KEY) and following not in repeated and not (
        _PAGE_NUMBER.match(following.replace("#", "0"))
    )


def join_pages(pages: list[list[str]]) -> tuple[list[str], list[int]]:
    """The running text of ``pages`` (lines each, right-stripped, blank lines dropped) as one
    piece per page, and the offset where each page's text starts (an empty page starts where
    the next text does).

    A line that ran to the margin continues on the next line, unless that one starts a
    paragraph: indented, where the document indents any line (Chinese typesetting indents
    each paragraph by two spaces), else after a sentence end (OCR keeps no indentation).
    """
    indented = any(line[:1].isspace() for lines in pages for line in lines)
    pages = [[line.strip() for line in lines] for lines in _indent_marks(pages, indented)]
    pieces: list[str] = []
    starts: list[int] = []
    offset = 0
    previous: str | None = None
    previous_full = False
    for lines in pages:
        widest = max((len(line) for line in lines), default=0)
        parts: list[str] = []
        page_start: int | None = None
        for line in lines:
            starts_paragraph = line.startswith(_INDENT)
            line = line.removeprefix(_INDENT)
            separator = "" if previous is None else _separator(previous, line, previous_full, starts_paragraph, indented)
            if separator == "-":  # a Latin word split over two lines: its hyphen goes
                _drop_last_char(parts if parts else pieces)
                offset -= 1
                separator = ""
            parts.append(separator)
            offset += len(separator)
            if page_start is None:
                page_start = offset
            parts.append(line)
            offset += len(line)
            previous, previous_full = line, len(lines) > 2 and len(line) >= FULL_LINE * widest
        pieces.append("".join(parts))
        starts.append(offset if page_start is None else page_start)
    if previous is not None:
        pieces[-1] += "\n"
    return pieces, starts


def _drop_last_char(parts: list[str]) -> None:
    index = max(i for i, part in enumerate(parts) if part)
    parts[index] = parts[index][:-1]


_INDENT = "\u0001"  # marks an indented line between _indent_marks and join_pages


def _indent_marks(pages: list[list[str]], indented: bool) -> list[list[str]]:
    if not indented:
        return pages
    return [[_INDENT + line.lstrip() if line[:1].isspace() else line for line in lines] for lines in pages]


def _separator(previous: str, line: str, previous_full: bool, starts_paragraph: bool, indented: bool) -> str:
    """What goes between two lines: a line break, nothing (Chinese), a space, or "-" (drop
    the previous line's hyphen)."""
    if not previous_full or CHAPTER_HEADING.match(line) or NAMED_HEADING.match(line) or starts_paragraph:
        return "\n"
    if not indented and _SENTENCE_END.search(previous):
        return "\n"
    if _CJK.match(previous[-1]) or _CJK.match(line[0]):
        return ""
    if previous.endswith("-") and previous[-2:-1].isalpha() and line[:1].islower():
        return "-"
    return " "
