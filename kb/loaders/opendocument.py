"""OpenDocument packages (.odt, .ods, .odp: what LibreOffice saves by default, and WPS and Google
Docs export): the content part and the text of its paragraphs, tables and shapes, with lxml.

Why by hand: a package is a ZIP whose ``mimetype`` member names the kind and whose
``content.xml`` holds the whole body; lxml (already used for EPUB and HTML) parses it without
entities or DTDs (``kb.loaders.safe_xml``), after the archive is checked against zip bombs. odfpy
would only add a DOM over the same XML. The three kinds' loaders (``odt``, ``ods``, ``odp``) share
what is here: a paragraph's text and the lines of a block of paragraphs, lists, tables, sections
and shapes, in document order.

A paragraph's text keeps its spans and links; ``text:s`` (runs of spaces), tabs and line breaks
become characters; notes (footnotes, endnotes), comments and tracked deletions are not text of
the paragraph; a shape anchored in a paragraph comes after it. Tables are ``a | b`` lines per
row (a merged cell once), as the DOCX and PPTX loaders write them; a table of contents is left
out, as the DOCX loader leaves it (it repeats the headings).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lxml.etree

from kb.errors import DocumentLoadError
from kb.loaders.safe_xml import parse_part
from kb.loaders.sniff import DAMAGED_ZIP, check_archive, read_member

_NS = {
    "office": "urn:oasis:names:tc:opendocument:xmlns:office:1.0",
    "text": "urn:oasis:names:tc:opendocument:xmlns:text:1.0",
    "table": "urn:oasis:names:tc:opendocument:xmlns:table:1.0",
    "draw": "urn:oasis:names:tc:opendocument:xmlns:drawing:1.0",
    "presentation": "urn:oasis:names:tc:opendocument:xmlns:presentation:1.0",
    "svg": "urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0",
}
# The package's ``mimetype`` -> the format name (templates read as their documents).
MIMETYPES = {
    f"application/vnd.oasis.opendocument.{kind}{template}": name
    for kind, name in (("text", "odt"), ("spreadsheet", "ods"), ("presentation", "odp"))
    for template in ("", "-template")
}
_KIND_NAMES = {"odt": "OpenDocument text", "ods": "OpenDocument spreadsheet", "odp": "OpenDocument presentation"}
_SAVE_AS = {"odt": ".docx", "ods": ".xlsx", "odp": ".pptx"}
MAX_REPEAT = 1_000_000  # table:number-*-repeated past this is a hostile file (sniff.MAX_CELLS)


def q(name: str) -> str:
    """``"text:p"`` as lxml's ``{namespace}p``."""
    prefix, local = name.split(":")
    return f"{{{_NS[prefix]}}}{local}"


_PARAGRAPHS = {q("text:p"), q("text:h")}
_SKIPPED_INLINE = {q("text:note"), q("office:annotation"), q("office:annotation-end"), q("text:tracked-changes"),
                   q("text:deletion"), q("draw:frame"), q("draw:custom-shape"), q("draw:g"), q("draw:rect"),
                   q("draw:ellipse"), q("draw:polygon"), q("draw:text-box")}
_SHAPES = {q("draw:frame"), q("draw:custom-shape"), q("draw:rect"), q("draw:ellipse"), q("draw:polygon"),
           q("draw:text-box"), q("draw:g")}
_CONTAINERS = {q("text:section"), q("text:list"), q("text:list-item"), q("text:list-header"), q("text:index-body"),
               q("office:text"), q("text:soft-page-break")}
_LEFT_OUT = {q("text:table-of-content"), q("text:tracked-changes"), q("text:sequence-decls"), q("office:forms"),
             q("table:shapes"), q("office:annotation"), q("text:variable-decls"), q("text:user-field-decls")}
_TABLE_ROWS = {q("table:table-header-rows"), q("table:table-rows"), q("table:table-row-group")}


def content_root(path: Path, *, kind: str) -> lxml.etree._Element:
    """The root of the package's ``content.xml`` (``kind``: odt/ods/odp, for messages); an
    encrypted package (``manifest:encryption-data``) is refused in one line."""
    name, what = str(path), _KIND_NAMES[kind]
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=name)
            has_manifest = "META-INF/manifest.xml" in archive.namelist()
            manifest = read_member(archive, "META-INF/manifest.xml", name=name) if has_manifest else b""
            if b"encryption-data" in manifest:
                raise DocumentLoadError(f"{path} is password-protected; save it without a password")
            data = read_member(archive, "content.xml", name=name)
    except DAMAGED_ZIP as e:
        raise DocumentLoadError(f"{path} is a damaged {what} ({e}); save it again") from e
    return parse_part(data, damaged=lambda reason: f"{path} is a damaged {what} (content.xml: {reason}); "
                                                   f"save it again or as {_SAVE_AS[kind]}")


def body(path: Path, *, kind: str) -> lxml.etree._Element:
    """The package's ``office:text`` / ``office:spreadsheet`` / ``office:presentation``."""
    tag = {"odt": "office:text", "ods": "office:spreadsheet", "odp": "office:presentation"}[kind]
    found = content_root(path, kind=kind).find(f"{q('office:body')}/{q(tag)}")
    if found is None:
        raise DocumentLoadError(f"{path} is a damaged {_KIND_NAMES[kind]} (its content has no {tag}); save it again")
    return found


@contextmanager
def named(path: Path) -> Iterator[None]:
    """Name ``path`` in a refusal raised while its content is read (``repeat``'s limit)."""
    try:
        yield
    except TooLarge as e:
        raise DocumentLoadError(f"{path} {e}; refused as too large") from e


class TooLarge(Exception):
    """A repeat count past MAX_REPEAT (the rest of a one-line message)."""


def paragraph_text(element: lxml.etree._Element) -> str:
    """The text of a paragraph (or heading, or span): its characters, spans and links, spaces,
    tabs and line breaks, without notes, comments, deletions or anchored shapes."""
    parts: list[str] = [element.text or ""]
    for child in element:
        tag = child.tag
        if tag == q("text:s"):
            parts.append(" " * min(repeat(child, "text:c"), 1000))
        elif tag == q("text:tab"):
            parts.append("\t")
        elif tag == q("text:line-break"):
            parts.append("\n")
        elif tag not in _SKIPPED_INLINE and isinstance(tag, str):
            parts.append(paragraph_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def block_lines(element: lxml.etree._Element) -> Iterator[tuple[str, int | None]]:
    """``(line, heading level or None)`` of the blocks inside ``element``, in order: paragraphs
    (then the shapes anchored in them), headings (``text:outline-level``), lists, sections,
    tables (a line per row) and shapes' text."""
    for child in element:
        tag = child.tag
        if tag in _PARAGRAPHS:
            level = repeat(child, "text:outline-level") if tag == q("text:h") else None
            yield paragraph_text(child), level
            for shape in child.iter(*_SHAPES):
                if shape.getparent() is not None and _anchored_in(shape, child):
                    yield from shape_lines(shape)
        elif tag == q("table:table"):
            for line in table_lines(child):
                yield line, None
        elif tag in _SHAPES:
            yield from shape_lines(child)
        elif tag in _CONTAINERS:
            yield from block_lines(child)


def shape_lines(shape: lxml.etree._Element) -> Iterator[tuple[str, None]]:
    """The lines of a shape: a frame's text box or table, a custom shape's own paragraphs, a
    group's members in order."""
    for line, _level in block_lines(shape):
        yield line, None


def table_lines(table: lxml.etree._Element) -> Iterator[str]:
    """A line per row with any text: its cells joined by `` | `` (a cell's paragraphs on one
    line, spaces collapsed; covered cells of a merge left out)."""
    for row in table_rows(table):
        cells = [cell for cell in row.iterchildren(q("table:table-cell"))]
        texts = [" ".join(" ".join(line for line, _ in block_lines(cell)).split()) for cell in cells]
        if any(texts):
            yield " | ".join(texts)


def table_rows(table: lxml.etree._Element) -> Iterator[lxml.etree._Element]:
    """The ``table:table-row`` elements of a table, header rows and row groups opened."""
    for child in table:
        if child.tag == q("table:table-row"):
            yield child
        elif child.tag in _TABLE_ROWS:
            yield from table_rows(child)


def repeat(element: lxml.etree._Element, attribute: str) -> int:
    """An integer attribute (``table:number-rows-repeated``, ``text:c``, an outline level),
    1 where absent or not a positive number; refused past MAX_REPEAT."""
    value = element.get(q(attribute))
    try:
        number = int(value) if value is not None else 1
    except ValueError:
        return 1
    if number > MAX_REPEAT:
        raise TooLarge(f"repeats a cell or row {number:,} times ({attribute}; limit {MAX_REPEAT:,})")
    return max(number, 1)


def _anchored_in(shape: lxml.etree._Element, paragraph: lxml.etree._Element) -> bool:
    """Whether ``shape`` is the outermost shape between itself and ``paragraph``."""
    parent = shape.getparent()
    while parent is not None and parent is not paragraph:
        if parent.tag in _SHAPES:
            return False
        parent = parent.getparent()
    return parent is paragraph
