"""Word 97-2003 documents (.doc): the main text from the document's piece table ([MS-DOC]).

Why by hand. Chinese offices still keep manuals and contracts as .doc, and no permissively
licensed Python library reads them (antiword and catdoc are GPL programs; python-docx reads only
.docx). The text itself is simple to reach: the compound file (olefile, BSD) holds a
``WordDocument`` stream whose File Information Block (FIB) says which table stream (``0Table`` or
``1Table``) holds the piece table (the CLX) and how many characters the main document has
(``ccpText``). Each piece maps a run of character positions to bytes of ``WordDocument``:
UTF-16LE, or one byte per character ("compressed", Windows-1252) for runs without other
characters. Headers, footnotes and text boxes follow the main text and are not read.

Word's marks become plain text: paragraph ends lines (``\\r``), line and page breaks newlines, a
field keeps its shown result and drops its code (``HYPERLINK "..."``, ``PAGE``), and object
anchors, footnote references and soft hyphens disappear. Tables become one ``a | b`` line per row,
as the DOCX loader writes them. In the text a cell end and a row end are the same mark (``\\x07``),
and an empty cell looks like a row end; what tells them apart is each paragraph's properties
(PAPX: ``sprmPFInTable``, ``sprmPFTtp``), kept in 512-byte pages (FKPs) that the table stream's
``PlcBtePapx`` lists. Where those cannot be read, every cell is its own line. The same properties
give each paragraph's style and its own outline level (``kb.loaders.doc_sprms``): the outline level,
else a heading style of the style sheet (``kb.loaders.doc_styles``: built-in, named so, by its own
outline level or the style it is based on) makes the paragraph a heading, as in a DOCX, and a
paragraph of a "toc N" style is a table of contents' entry, left out as the DOCX loader leaves it
out; otherwise chapters come from 第N章/回 lines as in plain text. Encrypted and damaged files are refused in one line.
"""

from __future__ import annotations

import re
import struct
from bisect import bisect_right
from pathlib import Path
from typing import NamedTuple

from kb.errors import DocumentLoadError
from kb.loaders.compound_file import compound_file
from kb.loaders.doc_sprms import IN_TABLE, ROW_END, heading_level, outline_level, prls
from kb.loaders.doc_styles import StyleSheet, style_sheet
from kb.loaders.document import Heading, LoadedDocument, text_blocks

_FIB_IDENT = 0xA5EC
_NFIB_WORD97 = 0x00C0  # FibBase.nFib below this: Word 6.0/95 (101-105), whose FIB has another layout
_FLAGS = 0x000A  # FibBase: fEncrypted 0x0100, fWhichTblStm 0x0200
_CCP_TEXT = 0x004C  # FibRgLw97.ccpText: characters in the main document
_FC_CLX = 0x01A2  # FibRgFcLcb97.fcClx / lcbClx: the piece table's place in the table stream
_FC_PAPX = 0x0102  # FibRgFcLcb97.fcPlcfBtePapx / lcbPlcfBtePapx: where the table stream lists the paragraph FKPs
_MAX_PIECES = 1 << 20
_PAGE = 512  # an FKP's size, at page number x 512 in the WordDocument stream
# Stand-ins for a table's marks from main_text to readable: a paragraph end inside a cell, a cell
# end, a row end (private-use characters: never in a .doc's text as such).
_IN_CELL, _CELL_END, _ROW_MARK = "\ue000", "\ue001", "\ue002"
_HEADING_MARKS = "\ue011\ue012\ue013"  # before a heading paragraph's end: levels 1, 2, 3
_HEADING_LINE = re.compile(f"^([^\n]*)([{_HEADING_MARKS}])[ \t]*$", re.MULTILINE)
_CONTENTS_MARK = "\ue010"  # before the end of a table of contents' entry: the line is left out
_CONTENTS_LINE = re.compile(f"^[^\n]*{_CONTENTS_MARK}[^\n]*(?:\n|$)", re.MULTILINE)
_FIELD_BEGIN, _FIELD_SEPARATOR, _FIELD_END = "\x13", "\x14", "\x15"
# Marks that end a line (paragraph, cell, line, page, column), non-breaking space and hyphen, and
# marks that stand for nothing readable (picture and object anchors, footnote and annotation
# references, soft hyphens); other control characters are dropped after.
_NEWLINES = str.maketrans({"\r": "\n", "\x07": "\n", "\x0b": "\n", "\x0c": "\n", "\x0e": "\n", "\xa0": " ",
                           "\x1e": "-", "\x01": None, "\x02": None, "\x03": None, "\x04": None, "\x05": None,
                           "\x08": None, "\x1f": None})
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f]")
_UNMARK = str.maketrans(dict.fromkeys(_HEADING_MARKS + _CONTENTS_MARK))  # a stand-in left where no line ends after it


def load_doc(path: Path) -> LoadedDocument:
    """A .doc file's main text."""
    with compound_file(path, kind="Word document") as read:
        word = read("WordDocument")
        if len(word) < _FC_CLX + 8 or _u16(word, 0) != _FIB_IDENT:
            raise DocumentLoadError(f"{path} is a damaged Word document (no FIB); save it again as .docx")
        if _u16(word, 2) < _NFIB_WORD97:
            raise DocumentLoadError(f"{path} is a Word 6.0/95 document; open it in Word or WPS and save it as .docx")
        flags = _u16(word, _FLAGS)
        if flags & 0x0100:
            raise DocumentLoadError(f"{path} is password-protected; save it without a password")
        table = read("1Table" if flags & 0x0200 else "0Table")
    try:
        raw = main_text(word, table)
    except (ValueError, IndexError, struct.error) as e:
        raise DocumentLoadError(f"{path} is a damaged Word document ({e}); save it again as .docx") from e
    text, headings = take_headings(readable(raw))
    if not text.strip():
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    return LoadedDocument(path, "doc", "doc", text_blocks([text]), headings=headings)


def main_text(word: bytes, table: bytes) -> str:
    """The main document's characters (``ccpText`` of them), Word's marks included, from the
    pieces of the CLX in ``table`` over the ``WordDocument`` stream ``word``."""
    length = struct.unpack_from("<i", word, _CCP_TEXT)[0]
    fc_clx, lcb_clx = struct.unpack_from("<II", word, _FC_CLX)
    if length < 0 or fc_clx + lcb_clx > len(table):
        raise ValueError("the FIB points outside the document")
    runs = paragraph_runs(word, table)
    starts = [run.start for run in runs]
    styles = style_sheet(word, table) if runs else StyleSheet({}, frozenset())
    out: list[str] = []
    taken = 0
    for start, end, offset, compressed in pieces(table[fc_clx: fc_clx + lcb_clx]):
        if taken >= length:
            break
        count = min(end - start, length - taken)
        if compressed:
            chunk = word[offset: offset + count].decode("cp1252", errors="replace")
        else:
            chunk = word[offset: offset + 2 * count].decode("utf-16-le", errors="replace")
        if len(chunk) != count:
            raise ValueError("a piece runs past the WordDocument stream")
        out.append(_mark_paragraphs(chunk, offset, 1 if compressed else 2, runs, starts, styles) if runs else chunk)
        taken += count
    return "".join(out)


class Paragraph(NamedTuple):
    """What the paragraph FKPs say of one paragraph."""

    start: int  # its first byte in WordDocument
    end: int
    in_table: bool
    row_end: bool  # its mark ends a table row
    istd: int  # its style, by index in the style sheet
    outline: int | None  # its own outline level (sprmPOutLvl), before its style's


def paragraph_runs(word: bytes, table: bytes) -> list[Paragraph]:
    """Each paragraph with properties, in byte order, from the paragraph FKPs; empty where they
    cannot be read (tables then stay a cell per line and headings plain lines, rather than the
    whole document being refused)."""
    try:
        fc, lcb = struct.unpack_from("<II", word, _FC_PAPX)
        plc = table[fc: fc + lcb]
        count = (len(plc) - 4) // 8
        if count <= 0 or len(plc) != 4 + 8 * count:
            return []
        runs = []
        for number in struct.unpack_from(f"<{count}I", plc, 4 * (count + 1)):
            runs.extend(_fkp_runs(word, (number & 0x3FFFFF) * _PAGE))
    except (ValueError, IndexError, struct.error):
        return []
    runs.sort()
    return runs


def _fkp_runs(word: bytes, at: int) -> list[Paragraph]:
    """One PapxFkp: ``crun`` in its last byte, ``crun + 1`` byte positions, then a 13-byte BxPap
    per paragraph whose first byte (x 2) locates its PapxInFkp (0: default properties)."""
    page = word[at: at + _PAGE]
    if len(page) != _PAGE:
        raise ValueError("an FKP past the stream")
    crun = page[-1]
    bounds = struct.unpack_from(f"<{crun + 1}I", page, 0)
    runs = []
    for i in range(crun):
        where = 2 * page[4 * (crun + 1) + 13 * i]
        istd, sprms = _papx(page, where) if where else (0, b"")
        runs.append(Paragraph(bounds[i], bounds[i + 1], *_table_flags(sprms), istd, outline_level(sprms)))
    return runs


def _papx(page: bytes, at: int) -> tuple[int, bytes]:
    """A PapxInFkp's style index and property modifiers: ``cb`` counts words, 0 means the next
    byte does."""
    size = 2 * page[at] - 1 if page[at] else 2 * page[at + 1]
    start = at + (1 if page[at] else 2)
    return struct.unpack_from("<H", page, start)[0], page[start + 2: start + size]


def _table_flags(sprms: bytes) -> tuple[bool, bool]:
    """(in a table, ends a row) from a paragraph's property modifiers."""
    flags = {sprm: bool(operand[0]) for sprm, operand in prls(sprms) if sprm in (IN_TABLE, ROW_END) and operand}
    return flags.get(IN_TABLE, False), flags.get(ROW_END, False)


def _mark_paragraphs(chunk: str, offset: int, width: int, runs: list[Paragraph], starts: list[int],
                     styles: StyleSheet) -> str:
    """``chunk`` (a piece's text from byte ``offset``, ``width`` bytes a character) with each table
    paragraph's end mark replaced by its stand-in, and a heading paragraph's or a contents entry's
    preceded by its own (``starts``: the runs' first bytes)."""
    marked = list(chunk)
    for i, char in enumerate(chunk):
        if char not in "\r\x07":
            continue
        at = offset + width * i
        run = runs[bisect_right(starts, at) - 1] if at >= starts[0] else None
        if run is None or not run.start <= at < run.end:
            continue
        if run.in_table:
            marked[i] = _ROW_MARK if run.row_end else _CELL_END if char == "\x07" else _IN_CELL
        elif char == "\r" and run.istd in styles.contents:
            marked[i] = _CONTENTS_MARK + char
        elif char == "\r" and (level := _paragraph_level(run, styles)):
            marked[i] = _HEADING_MARKS[level - 1] + char
    return "".join(marked)


def _paragraph_level(run: Paragraph, styles: StyleSheet) -> int:
    """A paragraph's heading level 1-3 (0: none): its own outline level, else its style's."""
    return heading_level(run.outline) if run.outline is not None else styles.levels.get(run.istd, 0)


def take_headings(text: str) -> tuple[str, tuple[Heading, ...]]:
    """``readable``'s text without the contents entries and the heading stand-ins, and the headings
    they marked (a heading paragraph with no text is none)."""
    text = _CONTENTS_LINE.sub("", text)
    headings: list[Heading] = []
    out: list[str] = []
    length = 0
    last = 0
    for line in _HEADING_LINE.finditer(text):
        out.append(text[last: line.start()])
        length += line.start() - last
        title = " ".join(line.group(1).split())
        if title:
            headings.append(Heading(length, _HEADING_MARKS.index(line.group(2)) + 1, title))
        out.append(line.group(1))
        length += len(line.group(1))
        last = line.end()
    out.append(text[last:])
    return "".join(out).translate(_UNMARK), tuple(headings)


def pieces(clx: bytes) -> list[tuple[int, int, int, bool]]:
    """``(first cp, end cp, byte offset, compressed)`` of each piece: the CLX's property runs
    (``Prc``, type 1) skipped, then its ``Pcdt`` (type 2): n + 1 positions and n descriptors."""
    at = 0
    while at < len(clx) and clx[at] == 0x01:
        at += 3 + struct.unpack_from("<H", clx, at + 1)[0]
    if at >= len(clx) or clx[at] != 0x02:
        raise ValueError("no piece table")
    size = struct.unpack_from("<I", clx, at + 1)[0]
    plc = clx[at + 5: at + 5 + size]
    count = (len(plc) - 4) // 12
    if count <= 0 or count > _MAX_PIECES or len(plc) != 4 + 12 * count:
        raise ValueError("a malformed piece table")
    cps = struct.unpack_from(f"<{count + 1}i", plc, 0)
    result = []
    for i in range(count):
        fc = struct.unpack_from("<I", plc, 4 * (count + 1) + 8 * i + 2)[0]
        compressed = bool(fc & 0x40000000)
        offset = (fc & 0x3FFFFFFF) // 2 if compressed else fc & 0x3FFFFFFF
        if cps[i + 1] < cps[i]:
            raise ValueError("piece positions out of order")
        result.append((cps[i], cps[i + 1], offset, compressed))
    return result


def readable(raw: str) -> str:
    """Word's text with its marks turned into plain text: fields keep their results."""
    kept: list[str] = []
    skipping: list[bool] = []  # per open field (they nest): still in its code part
    for part in re.split(f"([{_FIELD_BEGIN}{_FIELD_SEPARATOR}{_FIELD_END}])", raw):
        if part == _FIELD_BEGIN:
            skipping.append(True)
        elif part == _FIELD_SEPARATOR:
            if skipping:
                skipping[-1] = False
        elif part == _FIELD_END:
            if skipping:
                skipping.pop()
        elif not any(skipping):
            kept.append(part)
    text = _table_rows("".join(kept)).translate(_NEWLINES)
    return _CONTROL.sub("", text)


def _table_rows(text: str) -> str:
    """The table stand-ins as the DOCX loader's rows: cells joined by `` | `` (each cell's own
    paragraphs and spaces collapsed into one), a line per row."""
    if _ROW_MARK not in text:
        return text.replace(_IN_CELL, "\n").replace(_CELL_END, "\n")
    rows = text.split(_ROW_MARK)
    out = []
    for i, part in enumerate(rows):
        if i == len(rows) - 1:
            out.append(part.replace(_IN_CELL, "\n").replace(_CELL_END, "\n"))
            break
        before, _, row = part.rpartition("\r")  # the row starts after the last paragraph outside it
        cells = row.split(_CELL_END)
        if cells and not cells[-1].strip():
            cells.pop()  # the last cell's end mark comes right before the row's
        line = " | ".join(" ".join(cell.replace(_IN_CELL, " ").split()) for cell in cells)
        out.append(f"{before}\r{line}\n" if _ else f"{line}\n")
    return "".join(out)


def _u16(data: bytes, offset: int) -> int:
    return struct.unpack_from("<H", data, offset)[0]
