"""The text of a Word document's (DOCX) paragraphs as Word shows it, read from their XML.

python-docx's ``Paragraph.text`` reads only runs and hyperlinks directly under the paragraph, and
the body's paragraphs and tables only: a document lost, silently, the text of tracked insertions
(``w:ins``: every unaccepted edit of a shared manual), smart tags, simple fields, content controls
(``w:sdt``: forms and templates, inline and around whole blocks) and text boxes (flyers, 公文
templates). Here a paragraph's text is every ``w:t`` under it in document order, leaving out what
Word does not show as the paragraph's own text: deleted text (``w:del``), the source of a tracked
move (``w:moveFrom``, whose text Word shows again at its ``w:moveTo``), the fallback copy of a
drawing (``mc:Fallback``), ruby annotations (``w:rt``) and text boxes, whose paragraphs are read as
lines of their own after it. A block-level content control is read as the blocks inside it, except
Word's own table of contents (its headings are in the body already).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import lxml.etree

W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
_T, _TAB, _BR, _CR, _HYPHEN = (f"{{{W}}}{t}" for t in ("t", "tab", "br", "cr", "noBreakHyphen"))
_P, _TBL, _SDT, _SDT_CONTENT, _CUSTOM_XML = (f"{{{W}}}{t}" for t in ("p", "tbl", "sdt", "sdtContent", "customXml"))
_TEXT_BOX = f"{{{W}}}txbxContent"
_FALLBACK = f"{{{MC}}}Fallback"
# Subtrees that are not the paragraph's own text: deleted runs, a tracked move's old place, a
# drawing's fallback copy, ruby annotations above the base text, a text box's paragraphs (read after).
_NOT_OWN = {f"{{{W}}}del", f"{{{W}}}moveFrom", _FALLBACK, f"{{{W}}}rt", _TEXT_BOX, f"{{{W}}}pPr", f"{{{W}}}rPr"}
_MAX_DEPTH = 64  # nesting in a hostile file


def paragraph_text(p: lxml.etree._Element) -> str:
    """A ``w:p``'s own text: tabs as tabs, line breaks as newlines (page and column breaks as
    nothing), as python-docx renders the runs it reads."""
    out: list[str] = []
    _collect(p, out, 0)
    return "".join(out)


def _collect(element: lxml.etree._Element, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    for child in element:
        tag = child.tag
        if tag == _T:
            out.append(child.text or "")
        elif tag == _TAB:
            out.append("\t")
        elif tag == _BR:
            out.append("" if child.get(f"{{{W}}}type") in ("page", "column") else "\n")
        elif tag == _CR:
            out.append("\n")
        elif tag == _HYPHEN:
            out.append("-")
        elif isinstance(tag, str) and tag not in _NOT_OWN:
            _collect(child, out, depth + 1)


def text_box_paragraphs(p: lxml.etree._Element) -> list[lxml.etree._Element]:
    """The paragraphs of the text boxes anchored in ``p`` (nested boxes' too), in document order,
    each once (a drawing's fallback copy left out)."""
    return [child for box in p.iter(_TEXT_BOX) if not _in_fallback(box) for child in box.iter(_P)
            if next(child.iterancestors(_TEXT_BOX)) is box]


def _in_fallback(element: lxml.etree._Element) -> bool:
    return any(a.tag == _FALLBACK for a in element.iterancestors())


def body_blocks(parent: lxml.etree._Element, depth: int = 0) -> Iterator[lxml.etree._Element]:
    """The ``w:p`` and ``w:tbl`` blocks of a body (or cell) in order, those inside block-level
    content controls and custom XML included, Word's table of contents left out."""
    if depth > _MAX_DEPTH:
        return
    for child in parent:
        if child.tag in (_P, _TBL):
            yield child
        elif child.tag == _SDT and not _is_table_of_contents(child):
            for content in child.iterchildren(_SDT_CONTENT):
                yield from body_blocks(content, depth + 1)
        elif child.tag == _CUSTOM_XML:
            yield from body_blocks(child, depth + 1)


def _is_table_of_contents(sdt: lxml.etree._Element) -> bool:
    gallery = sdt.find(f"{{{W}}}sdtPr/{{{W}}}docPartObj/{{{W}}}docPartGallery")
    return gallery is not None and (gallery.get(f"{{{W}}}val") or "").lower() == "table of contents"


def cell_text(tc: lxml.etree._Element, read: Callable[[lxml.etree._Element], str] | None = None) -> str:
    """A table cell's text on one line: every paragraph in it (nested tables' and text boxes' too),
    each read by ``read`` (``paragraph_text``; the .docx loader's adds list numbers)."""
    read = read or paragraph_text
    texts = [read(p) for p in tc.iter(_P) if not _in_fallback(p)]
    return " ".join(" ".join(texts).split())
