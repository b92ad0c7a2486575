"""Citation markers ``[n]`` in generated text: keep the ones that resolve, drop the rest.

``CitationFilter`` works on a token stream: a piece ending inside ``[..`` is held back until
the marker closes (or clearly is not a marker), so an unresolvable marker never reaches the
user, not even for one token.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["CitationFilter", "cited_numbers", "clean_citations"]

_MARKER = re.compile(r"[\[【]\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]】]")
_OPEN = re.compile(r"[\[【][\d\s,，、]*$")
_MAX_HELD = 16


def _rewrite(match: re.Match[str], valid: Collection[int]) -> str:
    numbers = [int(n) for n in re.split(r"\s*[,，、]\s*", match.group(1).strip())]
    return "".join(f"[{n}]" for n in numbers if n in valid)


def clean_citations(text: str, valid: Collection[int]) -> str:
    """``text`` with markers normalized to ``[n]`` and numbers not in ``valid`` removed."""
    return _MARKER.sub(lambda m: _rewrite(m, valid), text)


def cited_numbers(text: str) -> list[int]:
    """The marker numbers of ``text`` in order of first appearance."""
    seen: list[int] = []
    for m in _MARKER.finditer(text):
        for n in re.split(r"\s*[,，、]\s*", m.group(1).strip()):
            if int(n) not in seen:
                seen.append(int(n))
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
