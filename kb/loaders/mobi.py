"""Kindle books (.mobi, .azw3, .azw) and PalmDOC e-books (.pdb, .prc): the book's text, its
``<h1>``-``<h3>`` headings as chapters (chapter lines such as 第N回 where it has none).

Why by hand: the readers that exist are GPL (calibre, KindleUnpack, ``mobi``), and the part needed
is small. A Kindle book is a Palm database: a list of records, the first a header (PalmDOC: the
compression, the text's length and record count, the encryption; then the MOBI header: the text
encoding, the KF8 flow table, which trailing bytes each text record carries). The text records,
each 4096 bytes of text once decompressed (PalmDOC's LZ77: literals, runs of literals,
back-references, space + character pairs), hold the book as HTML: Mobipocket markup in a MOBI 6
book, and in a KF8 book (.azw3) the XHTML files one after another as the first flow, before the
CSS and SVG flows. That HTML is read as a web page is (``kb.loaders.html``). A ``TEXtREAd``
database (PalmDOC) holds plain text in the device's encoding, decoded as a text file is.

Refused in one line: DRM-protected books (encrypted records: nothing readable without the
owner's key), HUFF/CDIC compression (Kindlegen's, for which "convert it to EPUB" is the way),
cut or damaged files.
"""

from __future__ import annotations

import re
import struct
from dataclasses import replace
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.html import extract_html, parse_html
from kb.loading import decode_bytes

KINDS = (b"BOOKMOBI", b"TEXtREAd")  # the database's type and creator, at offset 60
_NONE, _PALMDOC, _HUFF = 1, 2, 17480
_MAX_TEXT = 256 << 20  # a book's declared text past this is a hostile header


# A KF8 flow holds each XHTML file as a skeleton (declaration, head, an empty body) followed by
# the fragments that fill its body: dropping the skeletons' tags leaves the body text in order.
_SKELETON = re.compile(rb"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>|<head\b.*?</head>|</?(?:html|body)\b[^>]*>", re.I | re.S)


_GUIDE_TOC = re.compile(rb"<reference[^>]*type=\"toc\"[^>]*filepos=0*(\d+)", re.I)


class _Unreadable(Exception):
    """A whole book this reader cannot read (DRM, HUFF/CDIC): the rest of a one-line message."""


def load_mobi(path: Path) -> LoadedDocument:
    """A Kindle book's (or PalmDOC e-book's) text and headings."""
    data = path.read_bytes()
    try:
        kind, records = palm_records(data)
        header = data[records[0][0]: records[0][1]]
        text = book_text(data, records, header, mobi=kind == b"BOOKMOBI")
    except _Unreadable as e:
        raise DocumentLoadError(f"{path} {e}") from e
    except (ValueError, IndexError, struct.error) as e:
        raise DocumentLoadError(f"{path} is a damaged e-book ({e}); convert it to EPUB again") from e
    if kind == b"TEXtREAd":
        decoded, _ = decode_bytes(text, name=str(path))
        if not decoded.strip():
            raise DocumentLoadError(f"{path} has no text; there is nothing to add")
        return LoadedDocument(path, "mobi", "palmdoc", text_blocks([decoded]))
    if _version(header) >= 8:
        text = b"<html><body>" + _SKELETON.sub(b"", text) + b"</body></html>"
    else:
        text = _without_guide_toc(text)
    builder = extract_html(parse_html(_as_utf8_html(text, header), name=str(path)), name=str(path))
    book, headings = without_toc_section("".join(builder.parts), tuple(builder.headings))
    if not book.strip():
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    return LoadedDocument(path, "mobi", "mobi", text_blocks([book]), headings=headings)


def without_toc_section(text: str, headings: tuple[Heading, ...]) -> tuple[str, tuple[Heading, ...]]:
    """``text`` without a table-of-contents section: a heading (目录, "Table of Contents")
    whose lines, 3 or more, are all other headings' titles. A converted book carries one
    (calibre adds it at the end); kept, it would be one more chapter that only lists the others."""
    titles = {h.title for h in headings}
    for i, heading in enumerate(headings):
        start = heading.line_start if heading.line_start is not None else heading.start
        end = headings[i + 1].start if i + 1 < len(headings) else len(text)
        lines = [" ".join(line.split()) for line in text[start:end].splitlines()[1:] if line.strip()]
        if len(lines) >= 3 and all(line in titles and line != heading.title for line in lines):
            shift = end - start
            kept = tuple(h if h.start < start else replace(h, start=h.start - shift, line_start=None
                                                           if h.line_start is None else h.line_start - shift)
                         for h in headings if h is not heading)
            return text[:start] + text[end:], kept
    return text, headings


def _without_guide_toc(html: bytes) -> bytes:
    """A MOBI 6 book's HTML without the table of contents its guide points to (``<reference
    type="toc" filepos=N>``: byte N of the text, up to the next page break or the end)."""
    match = _GUIDE_TOC.search(html[:4096])
    if match is None:
        return html
    start = int(match.group(1))
    if not 0 < start < len(html):
        return html
    end = html.find(b"<mbp:pagebreak", start)
    return html[:start] + (html[end:] if end >= 0 else b"")


def palm_records(data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The database's kind and each record's ``(start, end)`` in ``data``."""
    if len(data) < 78 or data[60:68] not in KINDS:
        raise ValueError("no Palm database header")
    count = struct.unpack_from(">H", data, 76)[0]
    if count == 0 or 78 + 8 * count > len(data):
        raise ValueError("a record list past the file")
    starts = [struct.unpack_from(">I", data, 78 + 8 * i)[0] for i in range(count)] + [len(data)]
    if any(b < a for a, b in zip(starts, starts[1:], strict=False)) or starts[0] < 78 + 8 * count:
        raise ValueError("records out of order")
    return data[60:68], list(zip(starts, starts[1:], strict=False))


def book_text(data: bytes, records: list[tuple[int, int]], header: bytes, *, mobi: bool) -> bytes:
    """The decompressed text records, their trailing entries removed, cut to the declared
    length; for KF8 only the first flow (the XHTML)."""
    compression, length, count, _size, encryption = struct.unpack_from(">HxxIHHH", header, 0)
    if encryption:
        raise _Unreadable("is DRM-protected (its text is encrypted); only DRM-free books can be read")
    if compression == _HUFF:
        raise _Unreadable("is HUFF/CDIC-compressed (Kindlegen's compression); convert it to EPUB first")
    if compression not in (_NONE, _PALMDOC):
        raise ValueError(f"unknown compression {compression}")
    if length > _MAX_TEXT or count >= len(records):
        raise ValueError("a text length or record count past the file")
    trailing = _trailing_flags(header) if mobi else 0
    out = bytearray()
    for start, end in records[1: count + 1]:
        record = data[start: end - _trailing_size(data[start:end], trailing)]
        out += palmdoc_decompress(record) if compression == _PALMDOC else record
        if len(out) >= length:
            break
    text = bytes(out[:length])
    flow_end = _first_flow_end(data, records, header) if mobi else None
    return text[:flow_end] if flow_end else text


def palmdoc_decompress(record: bytes) -> bytes:
    """PalmDOC's LZ77: 0x01-0x08 copy that many literal bytes, 0x09-0x7F and 0x00 themselves,
    0x80-0xBF with the next byte a back-reference (11-bit distance, 3-10 bytes), 0xC0-0xFF a
    space and the byte xor 0x80."""
    out = bytearray()
    i, n = 0, len(record)
    while i < n:
        c = record[i]
        i += 1
        if 1 <= c <= 8:
            out += record[i: i + c]
            i += c
        elif c < 0x80:
            out.append(c)
        elif c >= 0xC0:
            out += bytes((0x20, c ^ 0x80))
        else:
            if i >= n:
                raise ValueError("a back-reference cut short")
            pair = (c << 8) | record[i]
            i += 1
            distance, size = (pair >> 3) & 0x7FF, (pair & 7) + 3
            if distance == 0 or distance > len(out):
                raise ValueError("a back-reference before the record's start")
            for _ in range(size):
                out.append(out[-distance])
    return bytes(out)


def _trailing_flags(header: bytes) -> int:
    """The MOBI header's extra-record-data flags (0 for headers too short to have them)."""
    if header[16:20] != b"MOBI":
        return 0
    mobi_length = struct.unpack_from(">I", header, 20)[0]
    return struct.unpack_from(">H", header, 0xF2)[0] if mobi_length >= 0xE4 and len(header) >= 0xF4 else 0


def _trailing_size(record: bytes, flags: int) -> int:
    """Bytes of trailing entries at the end of a text record: one per flag bit above bit 0, each
    ending in its own size (a backward 7-bit varint), then bit 0's multibyte-character overlap."""
    size = 0
    bits = flags >> 1
    while bits:
        if bits & 1:
            value = 0
            for byte in record[max(0, len(record) - size - 4): len(record) - size]:
                value = byte & 0x7F if byte & 0x80 else (value << 7) | (byte & 0x7F)
            size += value
        bits >>= 1
    if flags & 1 and len(record) > size:
        size += (record[len(record) - size - 1] & 0x3) + 1
    if size > len(record):
        raise ValueError("trailing entries longer than their record")
    return size


def _version(header: bytes) -> int:
    """The MOBI header's format version: 6 for MOBI 6, 8 for KF8 (0 without a MOBI header)."""
    return struct.unpack_from(">I", header, 0x24)[0] if header[16:20] == b"MOBI" and len(header) >= 0x28 else 0


def _first_flow_end(data: bytes, records: list[tuple[int, int]], header: bytes) -> int | None:
    """Where a KF8 book's first flow (its XHTML) ends, from the FDST record; None otherwise."""
    if _version(header) < 8 or len(header) < 0xC4:
        return None
    index = struct.unpack_from(">I", header, 0xC0)[0]
    if index >= len(records):
        return None
    start, end = records[index]
    fdst = data[start:end]
    if fdst[:4] != b"FDST" or len(fdst) < 20:
        return None
    flows = struct.unpack_from(">I", fdst, 8)[0]
    return struct.unpack_from(">I", fdst, 16)[0] if flows > 1 else None


def _as_utf8_html(text: bytes, header: bytes) -> bytes:
    """The book's HTML as UTF-8 with that charset declared (the MOBI header names 65001 or
    1252; the HTML itself usually declares nothing)."""
    encoding = struct.unpack_from(">I", header, 28)[0] if header[16:20] == b"MOBI" else 1252
    decoded = text.decode("utf-8" if encoding == 65001 else "cp1252", errors="replace")
    return b'<meta charset="utf-8">' + decoded.encode("utf-8")
