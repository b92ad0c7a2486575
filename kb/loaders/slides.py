"""A deck's text as pages, one per slide: what the PPTX, PPT and ODP loaders share. A slide's
title is its level-1 heading; its lines have their spaces collapsed, blank ones dropped; speaker
notes come after the slide's own text, the first line after ``NOTES_LABEL``."""

from __future__ import annotations

from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks

# Put before the first line of a slide's speaker notes (unless the notes start with it already).
NOTES_LABEL = "备注："


def with_notes_label(line: str) -> str:
    """The first line of a slide's notes with ``NOTES_LABEL`` before it; notes that begin "备注"
    themselves keep theirs (a deck's "备注：数据来自财务部" read "备注：备注：数据来自财务部")."""
    return line if line.startswith(NOTES_LABEL[:2]) else NOTES_LABEL + line


class SlidePages:
    """Collects slides in order: ``new_slide``, then its ``title`` and ``lines``."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.headings: list[Heading] = []
        self.starts: list[int] = []
        self.length = 0

    def new_slide(self) -> None:
        self.starts.append(self.length)

    def title(self, text: str) -> None:
        """The slide's title: a heading and its first line (nothing when blank)."""
        title = " ".join(text.split())
        if title:
            self.headings.append(Heading(self.length, 1, title))
            self.lines(title)

    def notes(self, text: str) -> None:
        """The slide's speaker notes: ``lines``, the first labelled (``with_notes_label``)."""
        lines = [" ".join(line.split()) for line in text.replace("\v", "\n").splitlines() if line.strip()]
        if lines:
            lines[0] = with_notes_label(lines[0])
            self.lines("\n".join(lines))

    def lines(self, text: str, *, prefix: str = "") -> None:
        """``text``'s lines (newlines and vertical tabs end them), ``prefix`` before the first."""
        for line in text.replace("\v", "\n").splitlines():
            line = " ".join(line.split())
            if line:
                self.parts.append(f"{prefix}{line}\n")
                self.length += len(prefix) + len(line) + 1
                prefix = ""

    def document(self, path: Path, format: str) -> LoadedDocument:
        if not self.length:
            raise DocumentLoadError(f"{path} has no text on any slide; there is nothing to add")
        return LoadedDocument(path, format, format, text_blocks(self.parts), headings=tuple(self.headings),
                              page_starts=tuple(self.starts))
