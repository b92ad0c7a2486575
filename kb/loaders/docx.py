"""Word documents (.docx) with python-docx: paragraphs and tables in body order, "Heading 1-3"
styles as chapters and sections, each table row one ``|``-separated line.

The archive is checked against zip bombs first; python-docx parses its XML with
``resolve_entities=False``, so entity expansion never happens.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.sniff import check_archive

# Built-in heading styles, by name in English and as Chinese Word names them.
_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-3])$", re.I)


def load_docx(path: Path) -> LoadedDocument:
    """A .docx file's text with its headings."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=str(path))
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as e:
        if isinstance(e, DocumentLoadError):
            raise
        raise DocumentLoadError(f"{path} is a damaged Word document ({e}); save it again as .docx") from e
    except Exception as e:  # lxml.etree.XMLSyntaxError and friends from a malformed part
        raise DocumentLoadError(f"{path} is a damaged Word document ({type(e).__name__}: {e}); save it again") from e
    parts: list[str] = []
    headings: list[Heading] = []
    length = 0

    def add_line(line: str) -> None:
        nonlocal length
        line = line.rstrip()
        if line.strip():
            parts.append(line + "\n")
            length += len(line) + 1

    for child in document.element.body.iterchildren():
        if child.tag == qn("w:p"):
            paragraph = Paragraph(child, document)
            level = _heading_level(paragraph)
            if level is not None and paragraph.text.strip():
                title = " ".join(paragraph.text.split())
                headings.append(Heading(length, level, title))
                add_line(title)
            else:
                add_line(paragraph.text)
        elif child.tag == qn("w:tbl"):
            for row in Table(child, document).rows:
                add_line(" | ".join(_row_cells(row)))
    if not length:
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    return LoadedDocument(path, "docx", "docx", text_blocks(parts), headings=tuple(headings))


def _heading_level(paragraph) -> int | None:  # type: ignore[no-untyped-def]
    try:
        name = paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, ValueError):
        return None
    match = _HEADING_STYLE.match(name or "")
    return int(match.group(1)) if match else None


def _row_cells(row) -> list[str]:  # type: ignore[no-untyped-def]
    """A row's cell texts, a merged cell once (python-docx repeats it for each grid column)."""
    cells: list[str] = []
    previous = None
    for cell in row.cells:
        if previous is not None and cell._tc is previous:
            continue
        previous = cell._tc
        cells.append(" ".join(cell.text.split()))
    return cells
