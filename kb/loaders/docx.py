"""Word documents (.docx, and .docm/.dotx/.dotm, the same body) with python-docx: paragraphs and tables in body order, "Heading 1-3"
styles as chapters and sections, each table row one ``|``-separated line.

A paragraph is a heading of level 1-3 by Word's own outline level as much as by its style's name:
its direct ``w:outlineLvl`` (WPS and Word's 大纲级别 on a body-styled paragraph), else its style's,
else the style it is based on, and so on (a custom "一级标题" based on Heading 1, or with its own
outline level). Outline level 9 ("body text") on the paragraph or a style stops the search.

Text is read from the XML (``kb.loaders.word_text``): tracked insertions, content controls, fields,
smart tags and text boxes included, which python-docx's own ``.text`` leaves out. Word's automatic
numbering ("第一章", "1.2", "（一）"), which is not in the text, goes before its paragraph as Word shows
it (``kb.loaders.docx_numbering``); a numbering part that is not well-formed is read as none.

The archive is checked against zip bombs first; python-docx parses its XML with
``resolve_entities=False``, so entity expansion never happens.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, heading_style_level, is_contents_style, text_blocks
from kb.loaders.docx_numbering import Numbering, without_broken_numbering
from kb.loaders.sniff import check_archive
from kb.loaders.word_text import body_blocks, cell_text, paragraph_text, text_box_paragraphs

_MAX_STYLE_DEPTH = 16
# Main-part content types of Word's macro-enabled documents and its templates (.docm, .dotx, .dotm).
_WORD_VARIANTS = (
    "application/vnd.ms-word.document.macroEnabled.main+xml",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml",
    "application/vnd.ms-word.template.macroEnabledTemplate.main+xml",
)


def load_docx(path: Path) -> LoadedDocument:
    """A .docx file's text with its headings."""
    from docx.opc.exceptions import PackageNotFoundError
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=str(path))
            repaired = without_broken_numbering(archive)
        document = _open_document(repaired or path)
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as e:
        if isinstance(e, DocumentLoadError):
            raise
        raise DocumentLoadError(f"{path} is a damaged Word document ({e}); save it again as .docx") from e
    except Exception as e:  # lxml.etree.XMLSyntaxError and friends from a malformed part
        raise DocumentLoadError(f"{path} is a damaged Word document ({type(e).__name__}: {e}); save it again") from e
    numbering = Numbering.of_document(document)
    parts: list[str] = []
    headings: list[Heading] = []
    length = 0

    def add_line(line: str) -> None:
        nonlocal length
        line = line.rstrip()
        if line.strip():
            parts.append(line + "\n")
            length += len(line) + 1

    for block in body_blocks(document.element.body):
        if block.tag == qn("w:p"):
            paragraph = Paragraph(block, document)
            if _is_contents_entry(paragraph):
                continue
            text = _numbered_text(block, numbering)
            level = _heading_level(paragraph)
            if level and text.strip():
                title = " ".join(text.split())
                headings.append(Heading(length, level, title))
                add_line(title)
            else:
                add_line(text)
            for inner in text_box_paragraphs(block):
                add_line(_numbered_text(inner, numbering))
        else:
            for row in Table(block, document).rows:
                add_line(" | ".join(_row_cells(row, numbering)))
    if not length:
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    return LoadedDocument(path, "docx", "docx", text_blocks(parts), headings=tuple(headings))


def _open_document(path: Path | IO[bytes]):  # type: ignore[no-untyped-def]
    """The python-docx document of a .docx, or of a macro-enabled document (.docm) or template
    (.dotx, .dotm): the same body under another main-part content type, which ``docx.Document``
    refuses. Opened through python-docx's package with those types mapped to its document part;
    nothing in a .docm's macros is ever run (python-docx executes nothing)."""
    from docx.opc.part import PartFactory
    from docx.package import Package
    from docx.parts.document import DocumentPart

    for content_type in _WORD_VARIANTS:
        PartFactory.part_type_for.setdefault(content_type, DocumentPart)
    part = Package.open(path if not isinstance(path, Path) else str(path)).main_document_part
    if not isinstance(part, DocumentPart):
        raise ValueError(f"not a Word document: its main part is {part.content_type}")
    return part.document


def _heading_level(paragraph) -> int | None:  # type: ignore[no-untyped-def]
    """Level 1-3 from the paragraph's outline level or its style chain (see the module docstring)."""
    direct = _outline_level(paragraph._p.pPr)
    if direct is not None:
        return direct
    try:
        style = paragraph.style
    except (KeyError, ValueError):
        return None
    for _ in range(_MAX_STYLE_DEPTH):  # basedOn chains may loop in a hostile file
        if style is None:
            return None
        named = heading_style_level(style.name or "")
        if named is not None:
            return named
        level = _outline_level(style.element.pPr)
        if level is not None:
            return level
        style = style.base_style
    return None


def _is_contents_entry(paragraph) -> bool:  # type: ignore[no-untyped-def]
    """A line of a table of contents that is a field (styles "TOC 1"..., "目录 1"...), not a
    content control: it repeats the headings, as the one inside a content control would."""
    try:
        name = paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, ValueError):
        return False
    return is_contents_style(name or "")


def _outline_level(properties) -> int | None:  # type: ignore[no-untyped-def]
    """A ``w:pPr``'s outline level as a heading level 1-3; 0 where it says body text or a deeper
    level (no heading, and the search stops), None where it says nothing."""
    from docx.oxml.ns import qn

    element = properties.find(qn("w:outlineLvl")) if properties is not None else None
    if element is None:
        return None
    try:
        value = int(element.get(qn("w:val"), ""))
    except ValueError:
        return None
    return value + 1 if 0 <= value <= 2 else 0


def _numbered_text(p, numbering: Numbering) -> str:  # type: ignore[no-untyped-def]
    """A ``w:p``'s text with its automatic number's label before it (none on an empty paragraph,
    which still counts, as in Word)."""
    label = numbering.label(p)
    text = paragraph_text(p)
    return label + text if text.strip() else text


def _row_cells(row, numbering: Numbering) -> list[str]:  # type: ignore[no-untyped-def]
    """A row's cell texts, a merged cell once (python-docx repeats it for each grid column)."""
    cells: list[str] = []
    previous = None
    for cell in row.cells:
        if previous is not None and cell._tc is previous:
            continue
        previous = cell._tc
        cells.append(cell_text(cell._tc, lambda p: _numbered_text(p, numbering)))
    return cells

