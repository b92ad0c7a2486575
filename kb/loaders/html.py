"""HTML (and EPUB's XHTML): the main text only, ``<h1>``-``<h3>`` as headings, tables as rows.

Parsed with lxml's HTML parser (no network, no DTD: an internal entity subset is never
expanded), walked without recursion so deep nesting cannot overflow the stack; a document
nested deeper than MAX_DEPTH is refused. Scripts, styles, navigation and forms are dropped;
where the page has a ``<main>`` (or one ``<article>``) only that is read. Ruby annotations
(``<rt>``, and ``<rp>``'s parentheses) are dropped too, as the DOCX loader drops Word's: the
text is the base text a reader reads, not 涿(zhuō)县.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import lxml.etree
import lxml.html

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loading import decode_bytes

MAX_DEPTH = 256  # libxml2's own default nesting limit for XML
MAX_HTML_BYTES = 64 << 20
_DROPPED = frozenset(
    "script style noscript template nav form button select textarea svg math iframe object embed head aside "
    "rt rp".split()
)
_OUTSIDE_MAIN = frozenset({"header", "footer"})  # page chrome, unless inside <main>/<article>
_BLOCKS = frozenset(
    "p div section article main li ul ol dl dt dd blockquote pre h1 h2 h3 h4 h5 h6 table tr thead tbody tfoot "
    "hr header footer figure figcaption address body caption title center details summary".split()
)
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3}
_SPACES = re.compile(r"\s+")
_SEGMENT_BREAK = "\n"  # where the source's white space held a line break (CSS Text 3's segment break)
_BROKEN_SPACE = re.compile(r"[ \n]*\n[ \n]*")
_WIDE = frozenset("FWH")  # East Asian Width: fullwidth, wide, halfwidth (not ambiguous)
_CHARSET = re.compile(rb"<meta[^>]+charset|<\?xml[^>]+encoding", re.I)


@dataclass
class _TextBuilder:
    """Text assembled line by line, with the offset and level of every heading, and the offset of
    the line where each element ``id`` starts (an EPUB's table of contents links to them)."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    line: list[str] = field(default_factory=list)
    headings: list[Heading] = field(default_factory=list)
    anchors: dict[str, int] = field(default_factory=dict)

    def add(self, text: str | None, *, keep_lines: bool = False) -> None:
        if not text:
            return
        if keep_lines:
            for i, piece in enumerate(text.split("\n")):
                if i:
                    self.end_line()
                self.add(piece)
            return
        text = collapse_white_space(text)
        if not self.line:
            text = text.lstrip()
        if text:
            self.line.append(text)

    def end_line(self) -> None:
        line = transform_segment_breaks("".join(self.line).rstrip())
        self.line = []
        if line:
            self.parts.append(line + "\n")
            self.length += len(line) + 1

    def anchor(self, name: str, *, block: bool) -> None:
        """Where the element ``name`` starts: its line's offset (a block element starts a line)."""
        if block:
            self.end_line()
        self.anchors.setdefault(name, self.length)

    def heading(self, level: int, title: str) -> None:
        self.end_line()
        title = " ".join(title.split())
        if title:
            self.headings.append(Heading(self.length, level, title))
            self.add(title)
            self.end_line()


def collapse_white_space(text: str) -> str:
    """Each run of white space as one space, or as one segment break where it holds a line break,
    so that :func:`transform_segment_breaks` can tell a wrapped source line from a space."""
    return _SPACES.sub(lambda m: _SEGMENT_BREAK if "\n" in m[0] or "\r" in m[0] else " ", text)


def transform_segment_breaks(line: str) -> str:
    r"""CSS Text 3's segment break transformation, as browsers do it: a line break in the source
    between two East Asian wide characters (``分争，\n并入``) is dropped, elsewhere it is a space,
    so a wrapped Chinese sentence is not cut by a space that splits its words for search."""
    return _BROKEN_SPACE.sub(lambda m: _segment_break(line[m.start() - 1 : m.start()], line[m.end() : m.end() + 1]),
                             line)


def _segment_break(before: str, after: str) -> str:
    """What a segment break between ``before`` and ``after`` becomes: nothing between wide
    characters (not Hangul, which spaces its words) or next to a zero-width space, else a space."""
    if "\u200b" in (before, after):
        return ""
    if before and after and all(_wide(char) for char in (before, after)):
        return ""
    return " "


def _wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in _WIDE and not unicodedata.name(char, "").startswith("HANGUL")


def inline_text(element: lxml.etree._Element, *, heading: bool = False) -> str:
    """An element's text as one line (a heading, a table cell, a table-of-contents entry): its
    pieces joined as they stand (``三国<b>演义</b>`` is 三国演义, not 三国 演义), a ``<br>`` as a
    space, ruby readings, scripts and the like left out, as in the running text. In a ``heading``
    a source line break stays a space: ``第一回\n宴桃园`` must still read as chapter 1's heading."""
    element = copy.deepcopy(element)
    element.tail = None
    for br in element.iter("br", "{*}br"):
        br.tail = " " + (br.tail or "")
    lxml.etree.strip_elements(element, *_DROPPED, *(f"{{*}}{tag}" for tag in _DROPPED), with_tail=False)
    text = collapse_white_space("".join(element.itertext()))
    return " ".join(text.split()) if heading else transform_segment_breaks(text).strip()


def parse_html(data: bytes, *, name: str) -> lxml.html.HtmlElement:
    """The parsed page; bytes without a declared charset are decoded like text files. A page
    nested past libxml2's depth limit (256) is refused, not silently cut short."""
    options = {"no_network": True, "remove_comments": True, "remove_pis": True, "huge_tree": False}
    try:
        if _CHARSET.search(data[:4096]):
            parser = lxml.html.HTMLParser(**options)
        else:
            text, _ = decode_bytes(data, name=name)
            data, parser = text.encode("utf-8"), lxml.html.HTMLParser(encoding="utf-8", **options)
        root = lxml.html.document_fromstring(data, parser=parser)
    except (lxml.etree.ParserError, lxml.etree.XMLSyntaxError, ValueError) as e:
        raise DocumentLoadError(f"{name} is not readable HTML ({e}); save the page again") from e
    if any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        raise DocumentLoadError(f"{name} is nested more than {MAX_DEPTH} elements deep; refused (not a real page)")
    return root


def extract_html(root: lxml.html.HtmlElement, *, name: str, builder: _TextBuilder | None = None) -> _TextBuilder:
    """Append the page's main text to ``builder`` (a new one when None)."""
    builder = builder or _TextBuilder()
    body = _main_part(root)
    stack: list[tuple[object, int]] = [(body, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _End):
            _close(item.element, builder)
            continue
        element = item
        assert isinstance(element, lxml.etree._Element)
        if depth > MAX_DEPTH:
            raise DocumentLoadError(f"{name} is nested more than {MAX_DEPTH} elements deep; refused (not a real page)")
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        if tag in _DROPPED or (tag in _OUTSIDE_MAIN and body.tag not in {"main", "article"}) or not tag:
            builder.add(element.tail)
            continue
        if anchor := element.get("id") or (element.get("name") if tag == "a" else None):
            builder.anchor(anchor, block=tag in _BLOCKS or tag in _HEADINGS or tag == "tr")
        if tag in _HEADINGS:
            builder.heading(_HEADINGS[tag], inline_text(element, heading=True))
            builder.add(element.tail)
            continue
        if tag == "tr":
            _table_row(element, builder)
            builder.add(element.tail)
            continue
        if tag == "br":
            builder.end_line()
            builder.add(element.tail)
            continue
        if tag in _BLOCKS:
            builder.end_line()
        builder.add(element.text, keep_lines=tag == "pre")
        stack.append((_End(element), depth))
        stack.extend((child, depth + 1) for child in reversed(element))
    builder.end_line()
    return builder


@dataclass(frozen=True)
class _End:
    element: object


def _close(element: object, builder: _TextBuilder) -> None:
    assert isinstance(element, lxml.etree._Element)
    if isinstance(element.tag, str) and element.tag.lower() in _BLOCKS:
        builder.end_line()
    builder.add(element.tail)


def _table_row(row: lxml.etree._Element, builder: _TextBuilder) -> None:
    """A table row as one line of ``|``-separated cells."""
    cells = [inline_text(cell) for cell in row if isinstance(cell.tag, str)]
    builder.end_line()
    builder.add(" | ".join(cells))
    builder.end_line()


def _main_part(root: lxml.html.HtmlElement) -> lxml.html.HtmlElement:
    """``<main>``, else the page's only ``<article>``, else ``<body>`` (else the root)."""
    mains = root.xpath("//main")
    if len(mains) == 1:
        return mains[0]
    articles = root.xpath("//article")
    if len(articles) == 1:
        return articles[0]
    bodies = root.xpath("//body")
    return bodies[0] if bodies else root


def load_html(path: Path) -> LoadedDocument:
    """An HTML page (a saved web page): its main text, ``<h1>``-``<h3>`` as headings."""
    size = path.stat().st_size
    if size > MAX_HTML_BYTES:
        raise DocumentLoadError(f"{path} is {size >> 20} MiB of HTML (limit {MAX_HTML_BYTES >> 20} MiB); split it")
    builder = extract_html(parse_html(path.read_bytes(), name=str(path)), name=str(path))
    if not builder.length:
        raise DocumentLoadError(f"{path} has no text outside scripts, styles and navigation; there is nothing to add")
    return LoadedDocument(path, "html", "html", text_blocks(builder.parts), headings=tuple(builder.headings))
