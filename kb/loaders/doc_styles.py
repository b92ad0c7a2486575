"""Which paragraph styles of a Word 97-2003 document (.doc) are headings ([MS-DOC] STSH).

A .doc names each paragraph's style by its index (``istd``, the first two bytes of its PapxInFkp).
The table stream's style sheet (STSH, at ``fcStshf`` / ``lcbStshf`` of the FIB) lists the styles
in istd order: a header (``cbStshi``, then ``cstd`` and ``cbSTDBaseInFile``), then per style its
size (``cbStd``; 0: an empty slot) and its STD: a fixed part of ``cbSTDBaseInFile`` bytes whose
first 12 bits are the built-in style identifier (``sti``: 1-9 are "heading 1" to "heading 9",
whatever the style is called in the document's language), then its name (a length-prefixed
UTF-16 string). A heading here is what the DOCX loader calls one: built-in heading 1-3, or a
style named so (``kb.loaders.document.heading_style_level``).
"""

from __future__ import annotations

import struct

from kb.loaders.document import heading_style_level

_FC_STSHF = 0x00A2  # FibRgFcLcb97.fcStshf / lcbStshf
_STI_HEADINGS = range(1, 10)  # stiLev1 .. stiLev9
_MAX_STYLES = 4096


def heading_styles(word: bytes, table: bytes) -> dict[int, int]:
    """``istd -> heading level`` of the document's heading styles; empty where the style sheet
    cannot be read (the text then simply has no headings)."""
    try:
        fc, lcb = struct.unpack_from("<II", word, _FC_STSHF)
        return _levels(table[fc: fc + lcb])
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return {}


def _levels(stsh: bytes) -> dict[int, int]:
    """The heading levels of an STSH's styles, by istd."""
    header = struct.unpack_from("<H", stsh, 0)[0]
    count, base = struct.unpack_from("<HH", stsh, 2)
    at = 2 + header
    levels: dict[int, int] = {}
    for istd in range(min(count, _MAX_STYLES)):
        size = struct.unpack_from("<H", stsh, at)[0]
        std = stsh[at + 2: at + 2 + size]
        at += 2 + size
        if len(std) < base + 2:
            continue  # an empty slot (or a cut one)
        level = _level(std, base)
        if level is not None:
            levels[istd] = level
    return levels


def _level(std: bytes, base: int) -> int | None:
    """A style's heading level: built-in heading N (``sti`` N) within the DOCX loader's levels, else
    by its name."""
    sti = struct.unpack_from("<H", std, 0)[0] & 0x0FFF
    if sti in _STI_HEADINGS:
        level = heading_style_level(f"heading {sti}")
        if level is not None:
            return level
    length = struct.unpack_from("<H", std, base)[0]
    name = std[base + 2: base + 2 + 2 * length].decode("utf-16-le")
    return heading_style_level(name)
