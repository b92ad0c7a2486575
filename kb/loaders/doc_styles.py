"""Which paragraph styles of a Word 97-2003 document (.doc) are headings, and which are a table of
contents' entries ([MS-DOC] STSH).

A .doc names each paragraph's style by its index (``istd``, the first two bytes of its PapxInFkp).
The table stream's style sheet (STSH, at ``fcStshf`` / ``lcbStshf`` of the FIB) lists the styles
in istd order: a header (``cbStshi``, then ``cstd`` and ``cbSTDBaseInFile``), then per style its
size (``cbStd``; 0: an empty slot) and its STD: a fixed part of ``cbSTDBaseInFile`` bytes (its first
12 bits the built-in style identifier ``sti``: 1-9 are "heading 1" to "heading 9" and 19-27 "toc 1"
to "toc 9", whatever the style is called in the document's language; the next word's top 12 bits
the style it is based on, ``istdBase``), then its name (a length-prefixed, null-terminated UTF-16
string), then a paragraph style's own properties (a ``cbUpx``-sized UpxPapx: its istd, then property
modifiers, among them ``sprmPOutLvl``, Word's 大纲级别).

A style is a heading as the DOCX loader decides it (``kb.loaders.docx``): built-in heading 1-3 or a
style named so (``kb.loaders.document.heading_style_level``), else by its own outline level, else by
the style it is based on (a custom "公司一级标题" based on Heading 1). Outline level 9 ("body
text") or a deeper one on the way stops the search. A paragraph's own outline level comes before
its style's (``kb.loaders.doc``).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from kb.loaders.doc_sprms import heading_level, outline_level
from kb.loaders.document import heading_style_level, is_contents_style

_FC_STSHF = 0x00A2  # FibRgFcLcb97.fcStshf / lcbStshf
_STI_HEADINGS = range(1, 10)  # stiLev1 .. stiLev9
_STI_CONTENTS = range(19, 28)  # stiToc1 .. stiToc9
_NO_BASE = 0x0FFF  # istdBase of a style based on none
_PARAGRAPH_STYLE = 1  # stk
_MAX_STYLES = 4096
_MAX_STYLE_DEPTH = 16  # based-on chains may loop in a hostile file


class Style(NamedTuple):
    """What one STD says that matters here."""

    named_level: int | None  # heading level by its sti or name
    outline: int | None  # its own sprmPOutLvl, if any
    base: int  # istdBase
    contents: bool  # a table of contents' entry style


class StyleSheet(NamedTuple):
    """The styles of a .doc that make a paragraph a heading or a contents entry, by istd."""

    levels: dict[int, int]  # heading level 1-3
    contents: frozenset[int]


def style_sheet(word: bytes, table: bytes) -> StyleSheet:
    """The document's heading and contents styles; empty where the style sheet cannot be read (the
    text then simply has no headings)."""
    try:
        fc, lcb = struct.unpack_from("<II", word, _FC_STSHF)
        styles = _styles(table[fc: fc + lcb])
    except (ValueError, IndexError, struct.error, UnicodeDecodeError):
        return StyleSheet({}, frozenset())
    levels = {istd: level for istd in styles if (level := _resolved_level(styles, istd))}
    return StyleSheet(levels, frozenset(istd for istd, style in styles.items() if style.contents))


def _styles(stsh: bytes) -> dict[int, Style]:
    """Each non-empty style of an STSH, by istd."""
    header = struct.unpack_from("<H", stsh, 0)[0]
    count, base = struct.unpack_from("<HH", stsh, 2)
    at = 2 + header
    styles: dict[int, Style] = {}
    for istd in range(min(count, _MAX_STYLES)):
        size = struct.unpack_from("<H", stsh, at)[0]
        std = stsh[at + 2: at + 2 + size]
        at += 2 + size
        if len(std) >= base + 2:  # else an empty slot (or a cut one)
            styles[istd] = _style(std, base)
    return styles


def _style(std: bytes, base: int) -> Style:
    """One STD (``base``: the size of its fixed part)."""
    first, second = struct.unpack_from("<HH", std, 0)
    sti, kind, based_on = first & 0x0FFF, second & 0x000F, second >> 4
    length = struct.unpack_from("<H", std, base)[0]
    name = std[base + 2: base + 2 + 2 * length].decode("utf-16-le")
    named = heading_style_level(f"heading {sti}") if sti in _STI_HEADINGS else None
    upx = base + 2 + 2 * length + 2  # the first LPUpx: a paragraph style's UpxPapx (istd, then its sprms)
    outline = None
    if kind == _PARAGRAPH_STYLE and upx + 2 <= len(std):
        size = struct.unpack_from("<H", std, upx)[0]
        outline = outline_level(std[upx + 4: upx + 2 + size])  # past its istd
    return Style(named or heading_style_level(name), outline, based_on,
                 sti in _STI_CONTENTS or is_contents_style(name))


def _resolved_level(styles: dict[int, Style], istd: int) -> int:
    """A style's heading level 1-3 through its based-on chain, or 0."""
    for _ in range(_MAX_STYLE_DEPTH):
        style = styles.get(istd)
        if style is None:
            return 0
        if style.named_level is not None:
            return style.named_level
        if style.outline is not None:
            return heading_level(style.outline)
        if style.base == _NO_BASE:
            return 0
        istd = style.base
    return 0
