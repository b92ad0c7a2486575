"""EPUB books with the standard library's zipfile and lxml (not ebooklib, whose AGPL does not
fit): the OPF spine in reading order, the EPUB 3 nav or EPUB 2 NCX table of contents as
chapters, and the book's own h1-h3 headings that nest under its entries as sections. Every XML
part is parsed without DTDs, entities or network; the archive is checked against zip bombs
before anything is unpacked.
"""

from __future__ import annotations

import posixpath
import zipfile
from pathlib import Path
from urllib.parse import unquote, urldefrag

import lxml.etree

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.html import _TextBuilder, extract_html, inline_text, parse_html
from kb.loaders.safe_xml import parse_part
from kb.loaders.sniff import DAMAGED_ZIP, check_archive, read_member

_NS = {
    "c": "urn:oasis:names:tc:opendocument:xmlns:container",
    "opf": "http://www.idpf.org/2007/opf",
    "ncx": "http://www.daisy.org/z3986/2005/ncx/",
    "x": "http://www.w3.org/1999/xhtml",
    "epub": "http://www.idpf.org/2007/ops",
}
_HTML_TYPES = {"application/xhtml+xml", "text/html"}


def _xml(data: bytes, *, name: str, part: str) -> lxml.etree._Element:
    return parse_part(data, damaged=lambda reason: f"{name} is a damaged EPUB ({part}: {reason}); save the book again")


def load_epub(path: Path) -> LoadedDocument:
    """An EPUB book's text in spine order, its table of contents as headings."""
    name = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=name)
            container = _xml(read_member(archive, "META-INF/container.xml", name=name), name=name, part="container.xml")
            opf_path = next(iter(container.xpath("//c:rootfile/@full-path", namespaces=_NS)), None)
            if not opf_path:
                raise DocumentLoadError(f"{name} is a damaged EPUB (container.xml names no package file)")
            opf = _xml(read_member(archive, str(opf_path), name=name), name=name, part=str(opf_path))
            base = posixpath.dirname(str(opf_path))
            manifest = {
                item.get("id"): item
                for item in opf.xpath("//opf:manifest/opf:item", namespaces=_NS)
            }
            spine = [
                manifest[ref] for ref in opf.xpath("//opf:spine/opf:itemref/@idref", namespaces=_NS) if ref in manifest
            ]
            toc = _table_of_contents(archive, opf, manifest, base, name=name)
            builder = _TextBuilder()
            starts: dict[str, int] = {}
            anchors: dict[tuple[str, str], int] = {}
            content_headings: list[Heading] = []
            for item in spine:
                if item.get("media-type") not in _HTML_TYPES:
                    continue
                href = _join(base, item.get("href", ""))
                starts[href] = builder.length
                before = len(builder.headings)
                extract_html(parse_html(read_member(archive, href, name=name), name=f"{name}:{href}"), name=name, builder=builder)
                content_headings += builder.headings[before:]
                del builder.headings[before:]
                anchors.update(((href, anchor), offset) for anchor, offset in builder.anchors.items())
                builder.anchors.clear()
    except DAMAGED_ZIP as e:
        raise DocumentLoadError(f"{name} is a damaged EPUB ({e}); save the book again") from e
    if not builder.length:
        raise DocumentLoadError(f"{name} has no text in its reading order; there is nothing to add")
    headings = with_nested_sections(_place_headings(toc, starts, anchors, builder), content_headings)
    return LoadedDocument(path, "epub", "epub", text_blocks(builder.parts), headings=headings)


def _join(base: str, href: str) -> str:
    return posixpath.normpath(posixpath.join(base, unquote(href))) if href else ""


def _table_of_contents(
    archive: zipfile.ZipFile, opf: lxml.etree._Element, manifest: dict, base: str, *, name: str
) -> list[tuple[int, str, str, str]]:
    """``(level, title, target file, fragment)`` of each entry, from the EPUB 3 nav, else the NCX."""
    nav = next((i for i in manifest.values() if "nav" in (i.get("properties") or "").split()), None)
    if nav is not None:
        href = _join(base, nav.get("href", ""))
        root = _xml(read_member(archive, href, name=name), name=name, part=href)
        lists = root.xpath("//x:nav[@epub:type='toc']/x:ol", namespaces=_NS) or root.xpath("//x:nav/x:ol", namespaces=_NS)
        if lists:
            entries: list[tuple[int, str, str, str]] = []
            _nav_entries(lists[0], 1, posixpath.dirname(href), entries)
            return entries
    toc_id = next(iter(opf.xpath("//opf:spine/@toc", namespaces=_NS)), None)
    ncx = manifest.get(toc_id) if toc_id else None
    if ncx is None:
        ncx = next((i for i in manifest.values() if i.get("media-type") == "application/x-dtbncx+xml"), None)
    if ncx is None:
        return []
    href = _join(base, ncx.get("href", ""))
    root = _xml(read_member(archive, href, name=name), name=name, part=href)
    entries = []
    stack = [(point, 1) for point in reversed(root.xpath("/ncx:ncx/ncx:navMap/ncx:navPoint", namespaces=_NS))]
    while stack:
        point, level = stack.pop()
        texts = point.xpath("ncx:navLabel/ncx:text", namespaces=_NS)
        label = " ".join(filter(None, (inline_text(text, heading=True) for text in texts)))
        src = next(iter(point.xpath("ncx:content/@src", namespaces=_NS)), "")
        if label and src:
            entries.append((level, label, *_target(posixpath.dirname(href), src)))
        stack.extend((child, level + 1) for child in reversed(point.xpath("ncx:navPoint", namespaces=_NS)))
    return entries


def _target(folder: str, href: str) -> tuple[str, str]:
    """The file an entry's link points to, and the element ``id`` in it (``""`` for none)."""
    path, fragment = urldefrag(href)
    return _join(folder, path), unquote(fragment)


def _nav_entries(ol: lxml.etree._Element, level: int, folder: str, out: list[tuple[int, str, str, str]]) -> None:
    stack = [(li, level) for li in reversed(ol.xpath("x:li", namespaces=_NS))]
    while stack:
        li, depth = stack.pop()
        links = li.xpath("x:a", namespaces=_NS)
        if links:
            title = inline_text(links[0], heading=True)
            href = links[0].get("href", "")
            if title and href:
                out.append((depth, title, *_target(folder, href)))
        stack.extend((child, depth + 1) for child in reversed(li.xpath("x:ol/x:li", namespaces=_NS)))


def with_nested_sections(toc: tuple[Heading, ...], content: list[Heading]) -> tuple[Heading, ...]:
    """The table of contents' headings, plus the books's own ``<h1>``-``<h3>`` headings that nest
    under them (deeper than the entry before them, not on its line): sections a table of contents
    leaves out (LibreOffice's EPUB export lists top-level headings only). Without a table of
    contents, the content's headings."""
    if not toc:
        return tuple(content)
    merged = list(toc)
    at = 0
    for heading in content:
        while at + 1 < len(toc) and toc[at + 1].start <= heading.start:
            at += 1
        entry = toc[at]
        if entry.start < heading.start and heading.level > entry.level and heading.level <= 3:
            merged.append(heading)
    return tuple(sorted(merged, key=lambda h: h.start))


def _place_headings(
    toc: list[tuple[int, str, str, str]],
    starts: dict[str, int],
    anchors: dict[tuple[str, str], int],
    builder: _TextBuilder,
) -> tuple[Heading, ...]:
    """Each entry at the line holding its title, looked for from where the entry links to: the
    element it names (one file may hold several chapters), else its file's start (that place
    itself where the title is not found near it)."""
    text = "".join(builder.parts)
    headings: list[Heading] = []
    for level, title, target, fragment in toc:
        if target not in starts:
            continue
        start = anchors.get((target, fragment), starts[target])
        found = text.find(title, start, start + 4096)
        if found < 0:
            first = title.split()[0] if title.split() else title
            found = text.find(first, start, start + 4096)
        if found >= 0:
            start = text.rfind("\n", 0, found) + 1
        if level > 3 or (headings and start < headings[-1].start):
            continue  # deeper than sections, or out of reading order (offsets stay ascending)
        headings.append(Heading(start, level, title))
    return tuple(headings)
