"""Citation markers ``[n]`` in generated text: keep the ones that resolve, drop the rest.

``CitationFilter`` works on a token stream: a piece ending inside ``[..`` is held back until
the marker closes (or clearly is not a marker), so an unresolvable marker never reaches the
user, not even for one token.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["CitationFilter", "cited_numbers", "clean_citations"]

_ITEM = r"\d+(?:\s*[-–—~～]\s*\d+)?"  # 3, or a range 1-3
# [1] [1,2] 【1、2】 ［1］ [1-3]: the brackets and separators models write, full-width ones too.
_MARKER = re.compile(rf"[\[【［]\s*({_ITEM}(?:\s*[,，、]\s*{_ITEM})*)\s*[\]】］]")
_OPEN = re.compile(r"[\[【［][\d\s,，、\-–—~～]*$")
_SPLIT = re.compile(r"\s*[,，、]\s*")
_RANGE = re.compile(r"\s*[-–—~～]\s*")
_MAX_HELD = 64
"""Longest open marker held back: ``[10, 12, 15, 18, 99`` (past 16 characters) went out unchecked.
Only digits and separators are held, so a ``[`` in prose is released at its next other character."""
_MAX_RANGE = 100
"""A range marker names at most this many numbers (``[1-99999]`` is not expanded past it)."""


def _numbers(group: str, valid: Collection[int] | None = None) -> list[int]:
    """The numbers a marker's inside names, ranges expanded (to those in ``valid`` when given)."""
    numbers: list[int] = []
    for item in _SPLIT.split(group.strip()):
        first, _, last = _RANGE.sub("-", item).partition("-")
        low, high = int(first), int(last or first)
        if valid is not None:
            numbers.extend(sorted(n for n in valid if low <= n <= high))
        else:
            numbers.extend(range(low, min(high, low + _MAX_RANGE - 1) + 1))
    return numbers


def _rewrite(match: re.Match[str], valid: Collection[int]) -> str:
    return "".join(f"[{n}]" for n in _numbers(match.group(1), valid))


def clean_citations(text: str, valid: Collection[int]) -> str:
    """``text`` with markers normalized to ``[n]`` (a range ``[1-3]`` to ``[1][2][3]``) and numbers not
    in ``valid`` removed: a range left as written would cite passages nobody checked."""
    return _MARKER.sub(lambda m: _rewrite(m, valid), text)


def cited_numbers(text: str) -> list[int]:
    """The marker numbers of ``text`` in order of first appearance."""
    seen: list[int] = []
    for m in _MARKER.finditer(text):
        for n in _numbers(m.group(1)):
            if n not in seen:
                seen.append(n)
    return seen


class CitationFilter:
    """Feed streamed pieces, get back text with only resolvable markers (``flush`` at the end)."""

    def __init__(self, valid: Collection[int]) -> None:
        self.valid = set(valid)
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        open_marker = _OPEN.search(text)
        if open_marker and len(text) - open_marker.start() <= _MAX_HELD:
            self._held = text[open_marker.start() :]
            text = text[: open_marker.start()]
        else:
            self._held = ""
        return clean_citations(text, self.valid)

    def flush(self) -> str:
        text, self._held = self._held, ""
        return clean_citations(text, self.valid)
