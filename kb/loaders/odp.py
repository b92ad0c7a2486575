"""OpenDocument presentations (.odp, .otp): every slide one page, its title a level-1 heading,
its shapes' text in reading order (top to bottom, then left to right; groups opened), tables as
``a | b`` rows, then the speaker notes after ``备注：``: the document the PPTX loader makes of the
same deck (a test converts one to the other). Slide-number, date, header and footer placeholders
are not read."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import lxml.etree

from kb.loaders.document import LoadedDocument
from kb.loaders.opendocument import body, named, q, shape_lines
from kb.loaders.slides import SlidePages

_SHAPES = {q("draw:frame"), q("draw:custom-shape"), q("draw:rect"), q("draw:ellipse"), q("draw:polygon"), q("draw:g")}
_FIELD_CLASSES = {"page-number", "footer", "date-time", "header", "page"}
_LENGTH = re.compile(r"^\s*(-?[\d.]+)\s*(cm|mm|in|pt|pc|px)?\s*$")
_TO_CM = {"cm": 1.0, "mm": 0.1, "in": 2.54, "pt": 2.54 / 72, "pc": 2.54 / 6, "px": 2.54 / 96, None: 1.0}


def load_odp(path: Path) -> LoadedDocument:
    """An .odp deck's text, one page per slide, slide titles as headings."""
    with named(path):
        return _deck(path)


def _deck(path: Path) -> LoadedDocument:
    pages = SlidePages()
    for page in body(path, kind="odp").iterchildren(q("draw:page")):
        pages.new_slide()
        shapes = [shape for shape in page if shape.tag in _SHAPES and _class(shape) not in _FIELD_CLASSES]
        title = next((shape for shape in shapes if _class(shape) == "title"), None)
        if title is not None:
            pages.title(" ".join(line for line, _ in shape_lines(title)))
        for line in _reading_order([shape for shape in shapes if shape is not title]):
            pages.lines(line)
        notes = page.find(q("presentation:notes"))
        if notes is not None:
            text = "\n".join(line for shape in notes if _class(shape) == "notes" for line, _ in shape_lines(shape))
            pages.notes(text)
    return pages.document(path, "odp")


def _reading_order(shapes: list[lxml.etree._Element]) -> Iterator[str]:
    """The lines of ``shapes`` top to bottom, then left to right; a group's members in their own
    order at the group's place."""
    for shape in sorted(shapes, key=_position):
        if shape.tag == q("draw:g"):
            yield from _reading_order([member for member in shape if member.tag in _SHAPES])
        else:
            yield from (line for line, _ in shape_lines(shape))


def _position(shape: lxml.etree._Element) -> tuple[float, float]:
    """(top, left) in cm; a group's is its members' smallest."""
    if shape.tag == q("draw:g"):
        members = [_position(member) for member in shape if member.tag in _SHAPES]
        return min(members) if members else (0.0, 0.0)
    return _length(shape.get(q("svg:y"))), _length(shape.get(q("svg:x")))


def _length(value: str | None) -> float:
    match = _LENGTH.match(value or "")
    return float(match.group(1)) * _TO_CM[match.group(2)] if match else 0.0


def _class(shape: lxml.etree._Element) -> str | None:
    return shape.get(q("presentation:class"))
