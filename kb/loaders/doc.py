"""Word 97-2003 documents (.doc): the main text from the document's piece table ([MS-DOC]).

Why by hand. Chinese offices still keep manuals and contracts as .doc, and no permissively
licensed Python library reads them (antiword and catdoc are GPL programs; python-docx reads only
.docx). The text itself is simple to reach: the compound file (olefile, BSD) holds a
``WordDocument`` stream whose File Information Block (FIB) says which table stream (``0Table`` or
``1Table``) holds the piece table (the CLX) and how many characters the main document has
(``ccpText``). Each piece maps a run of character positions to bytes of ``WordDocument``:
UTF-16LE, or one byte per character ("compressed", Windows-1252) for runs without other
characters. Headers, footnotes and text boxes follow the main text and are not read.

Word's marks become plain text: paragraph and cell ends lines (``\\r``, ``\\x07``), line and page
breaks newlines, a field keeps its shown result and drops its code (``HYPERLINK "..."``, ``PAGE``),
and object anchors, footnote references and soft hyphens disappear. Styles are not read: chapters
come from 第N章/回 lines as in plain text. Encrypted and damaged files are refused in one line.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.compound_file import compound_file
from kb.loaders.document import LoadedDocument, text_blocks

_FIB_IDENT = 0xA5EC
_NFIB_WORD97 = 0x00C0  # FibBase.nFib below this: Word 6.0/95 (101-105), whose FIB has another layout
_FLAGS = 0x000A  # FibBase: fEncrypted 0x0100, fWhichTblStm 0x0200
_CCP_TEXT = 0x004C  # FibRgLw97.ccpText: characters in the main document
_FC_CLX = 0x01A2  # FibRgFcLcb97.fcClx / lcbClx: the piece table's place in the table stream
_MAX_PIECES = 1 << 20
_FIELD_BEGIN, _FIELD_SEPARATOR, _FIELD_END = "\x13", "\x14", "\x15"
# Marks that end a line (paragraph, cell, line, page, column), non-breaking space and hyphen, and
# marks that stand for nothing readable (picture and object anchors, footnote and annotation
# references, soft hyphens); other control characters are dropped after.
_NEWLINES = str.maketrans({"\r": "\n", "\x07": "\n", "\x0b": "\n", "\x0c": "\n", "\x0e": "\n", "\xa0": " ",
                           "\x1e": "-", "\x01": None, "\x02": None, "\x03": None, "\x04": None, "\x05": None,
                           "\x08": None, "\x1f": None})
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f]")


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
    text = readable(raw)
    if not text.strip():
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    return LoadedDocument(path, "doc", "doc", text_blocks([text]))


def main_text(word: bytes, table: bytes) -> str:
    """The main document's characters (``ccpText`` of them), Word's marks included, from the
    pieces of the CLX in ``table`` over the ``WordDocument`` stream ``word``."""
    length = struct.unpack_from("<i", word, _CCP_TEXT)[0]
    fc_clx, lcb_clx = struct.unpack_from("<II", word, _FC_CLX)
    if length < 0 or fc_clx + lcb_clx > len(table):
        raise ValueError("the FIB points outside the document")
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
        out.append(chunk)
        taken += count
    return "".join(out)


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
    text = "".join(kept).translate(_NEWLINES)
    return _CONTROL.sub("", text)


def _u16(data: bytes, offset: int) -> int:
    return struct.unpack_from("<H", data, offset)[0]
