"""Page text to running text, for PDF text layers and OCR alike: repeated page headers and
footers and bare page numbers removed, lines of a wrapped paragraph joined (without a space
between Chinese characters, none of a hyphen's "-" in a split Latin word), and the offset where
every page's text starts kept."""

from __future__ import annotations

import re
from collections import Counter

from kb.splitting import CHAPTER_HEADING, NAMED_HEADING

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


def remove_headers_and_footers(pages: list[list[str]]) -> list[list[str]]:
    """``pages`` (lines each) without bare page numbers and without lines that recur (digits
    aside) at the top or bottom of at least half the pages (when there are 3 or more)."""
    keys: Counter[str] = Counter()
    for lines in pages:
        keys.update({_edge_key(line) for line in _edges(lines)})
    threshold = max(3, _REPEATED * len(pages))
    repeated = {key for key, count in keys.items() if count >= threshold and key}
    out = []
    for lines in pages:
        edge = set(range(min(_EDGE_LINES, len(lines)))) | set(range(max(0, len(lines) - _EDGE_LINES), len(lines)))
        out.append(
            [
                line
                for i, line in enumerate(lines)
                if not (i in edge and (_edge_key(line) in repeated or (len(pages) > 1 and _PAGE_NUMBER.match(line))))
            ]
        )
    return out


def _edges(lines: list[str]) -> list[str]:
    return lines[:_EDGE_LINES] + lines[max(_EDGE_LINES, len(lines) - _EDGE_LINES) :]


def _edge_key(line: str) -> str:
    return _DIGITS.sub("#", " ".join(line.split()))


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
