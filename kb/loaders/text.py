"""Text and Markdown files: streamed from disk in blocks (:mod:`kb.loading` detects the encoding);
Markdown's ``#``/``##``/``###`` headings (outside code fences) become chapters and sections."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from kb.loaders.document import Heading, LoadedDocument
from kb.loading import open_text_file, replaced_warning

# An ATX heading of level 1-3 ("## 3.2 安装"); the title starts at group "title".
_ATX = re.compile(r"^ {0,3}(#{1,3})[ \t]+(?P<title>[^\n]*?)[ \t#]*\r?$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
# A line longer than this is never a heading: the scan holds at most this much of one line.
_MAX_LINE = 4096


def load_text_document(path: Path) -> LoadedDocument:
    """A ``.txt``/``.md`` file; ATX headings make it Markdown with structural headings."""
    text_file = open_text_file(path)
    headings = scan_markdown_headings(text_file.blocks())
    return LoadedDocument(
        path=path,
        format="markdown" if headings else "text",
        encoding=text_file.encoding,
        read_blocks=text_file.blocks,
        headings=headings,
        warnings=[replaced_warning(path.name, text_file.replaced)] if text_file.replaced else [],
    )


def scan_markdown_headings(blocks: Iterable[str]) -> tuple[Heading, ...]:
    """The level 1-3 ATX headings of a text given in blocks (at most _MAX_LINE characters of a
    line held at a time)."""
    headings: list[Heading] = []
    offset = 0  # offset of the current line
    line, length = "", 0  # its first characters, and its whole length
    in_fence = False

    def finish() -> None:
        nonlocal in_fence
        if length > _MAX_LINE:
            return
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _ATX.match(line)) and match.group("title").strip():
            title = " ".join(match.group("title").split())
            headings.append(Heading(offset + match.start("title"), len(match.group(1)), title, offset))

    for block in blocks:
        start = 0
        while True:
            newline = block.find("\n", start)
            piece = block[start:] if newline < 0 else block[start:newline]
            if length <= _MAX_LINE:
                line += piece[: _MAX_LINE + 1 - len(line)]
            length += len(piece)
            if newline < 0:
                break
            finish()
            offset += length + 1
            line, length = "", 0
            start = newline + 1
    finish()
    return tuple(headings)
