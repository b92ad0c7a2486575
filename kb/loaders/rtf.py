"""RTF documents (WordPad, "save as RTF" in Word and WPS) as plain text, by striprtf (BSD-3).

RTF is 7-bit text: its non-ASCII characters are escapes, ``\\'c4\\'e3`` for bytes in a code page
or ``\\u20320?`` for code points. Read as a text file, its control words became the passages
(``{\\rtf1\\ansi\\ansicpg936\\deff0{\\fonttbl...``). striprtf drops control words and the
destinations that are not text (font, colour and style tables, pictures) and decodes each
``\\'hh`` run in its font's charset (``\\fcharset134``: GB2312, ``136``: Big5), else in the
document's ``\\ansicpg``: an English Word that declares 1252 still writes Chinese in a SimSun
font as GBK bytes. Paragraphs (``\\par``) become lines; a table row (striprtf ends each
``\\cell`` with ``|``) becomes its cells joined by `` | ``, as DOCX, ODT and HTML tables read;
chapters come from 第N回 lines as in plain text.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import LoadedDocument, text_blocks

_ANSICPG = re.compile(rb"\\ansicpg(\d+)")
_FCHARSET = re.compile(rb"\\fcharset(\d+)")
# RTF font charsets of East Asian scripts -> their Windows code pages.
_CHARSET_CODEPAGES = {128: 932, 129: 949, 134: 936, 136: 950}
_DEFAULT_CODEPAGE = 1252
_HEADER_BYTES = 64 << 10  # where the header and font table are
_TABLE_ROW = re.compile(r"^[^\n]*\|[ \t]*$", re.MULTILINE)  # a line of cells, each ended by striprtf's "|"


def load_rtf(path: Path) -> LoadedDocument:
    """An RTF file's text, in the code page it declares."""
    from striprtf.striprtf import rtf_to_text

    raw = path.read_bytes()
    codec = rtf_codec(raw[:_HEADER_BYTES])
    try:
        text = rtf_to_text(raw.decode(codec, errors="replace"), encoding=codec, errors="replace")
    except (ValueError, IndexError, KeyError) as e:  # malformed escapes or groups
        raise DocumentLoadError(f"{path} is a damaged RTF document ({type(e).__name__}); save it again") from e
    if not text.strip():
        raise DocumentLoadError(f"{path} has no text; there is nothing to add")
    text = _TABLE_ROW.sub(_row_line, text)
    warnings = []
    if replaced := text.count("\ufffd"):
        warnings.append(f"{path.name}: {replaced} character{'s' if replaced > 1 else ''} not in code page "
                        f"{codec} replaced with U+FFFD")
    return LoadedDocument(path, "rtf", codec, text_blocks([text]), warnings=warnings)


def _row_line(row: re.Match[str]) -> str:
    """A table row as the other formats write one: ``假别|天数|`` -> ``假别 | 天数``."""
    return " | ".join(" ".join(cell.split()) for cell in row.group().rstrip()[:-1].split("|"))


def rtf_codec(header: bytes) -> str:
    """The codec of an RTF document's ANSI code page (``\\ansicpg``), from its first bytes; without
    one, that of the first East Asian font charset, else Windows-1252 (RTF's default). striprtf
    decodes escapes by font; this decodes raw 8-bit bytes and is the document's ``encoding``."""
    declared = _ANSICPG.search(header)
    if declared:
        page = int(declared.group(1))
    else:
        charsets = (int(m.group(1)) for m in _FCHARSET.finditer(header))
        page = next((_CHARSET_CODEPAGES[c] for c in charsets if c in _CHARSET_CODEPAGES), _DEFAULT_CODEPAGE)
    name = "utf-8" if page == 65001 else f"cp{page}"
    try:
        return codecs.lookup(name).name
    except LookupError:  # a code page Python has no codec for (e.g. a Mac one): the default
        return codecs.lookup(f"cp{_DEFAULT_CODEPAGE}").name
