"""OpenDocument text (.odt, .ott): paragraphs, lists and tables in body order, headings
(``text:h`` at outline levels 1-3) as chapters and sections, each table row one ``a | b`` line:
the document the DOCX loader makes of the same text (a test converts one to the other)."""

from __future__ import annotations

from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.opendocument import block_lines, body, named


def load_odt(path: Path) -> LoadedDocument:
    """An .odt document's text, its outline headings as headings."""
    parts: list[str] = []
    headings: list[Heading] = []
    length = 0
    with named(path):
        lines = list(block_lines(body(path, kind="odt")))
    for line, level in lines:
        if level is not None and 1 <= level <= 3 and line.strip():
            line = " ".join(line.split())
            headings.append(Heading(length, level, line))
        line = line.rstrip()
        if line.strip():
            parts.append(line + "\n")
            length += len(line) + 1
    if not length:
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    return LoadedDocument(path, "odt", "odt", text_blocks(parts), headings=tuple(headings))
