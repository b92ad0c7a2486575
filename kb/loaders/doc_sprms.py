"""Property modifiers of a Word 97-2003 document (.doc): the Prl runs ([MS-DOC] 2.2.7.1) that a
paragraph's PAPX and a style's UpxPapx carry.

A Prl is a 2-byte ``sprm`` and its operand, whose size the sprm's top three bits (``spra``) give, or,
for spra 6, the operand's first byte (two bytes for ``sprmTDefTable``; ``sprmPChgTabs`` with 255
there has a form this reader does not size, and ends the walk with what it found so far).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

OUTLINE_LEVEL = 0x2640  # sprmPOutLvl: 0-8, 9 body text (Word's 大纲级别)
IN_TABLE, ROW_END = 0x2416, 0x2417  # sprmPFInTable, sprmPFTtp (the mark that ends a table row)
_OPERAND_SIZE = {0: 1, 1: 1, 2: 2, 3: 4, 4: 2, 5: 2, 7: 3}  # by spra; 6: sized in the operand
_DEF_TABLE, _CHANGE_TABS = 0xD608, 0xC615  # spra 6 sprms whose size is not one leading byte


def prls(sprms: bytes) -> Iterator[tuple[int, bytes]]:
    """Each (sprm, operand) of a run of Prl, in order."""
    at = 0
    while at + 2 < len(sprms):
        sprm = struct.unpack_from("<H", sprms, at)[0]
        spra = sprm >> 13
        if spra != 6:
            size = _OPERAND_SIZE[spra]
        elif sprm == _DEF_TABLE:
            size = 1 + struct.unpack_from("<H", sprms, at + 2)[0]
        elif sprm == _CHANGE_TABS and sprms[at + 2] == 255:
            return
        else:
            size = 1 + sprms[at + 2]
        yield sprm, sprms[at + 2: at + 2 + size]
        at += 2 + size


def outline_level(sprms: bytes) -> int | None:
    """The outline level a run of Prl sets (``sprmPOutLvl``), or None."""
    return next((operand[0] for sprm, operand in prls(sprms) if sprm == OUTLINE_LEVEL and operand), None)


def heading_level(outline: int) -> int:
    """An outline level as a heading level 1-3, or 0 for body text or a deeper level (no heading, and the
    search stops), as ``kb.loaders.docx`` reads ``w:outlineLvl``."""
    return outline + 1 if 0 <= outline <= 2 else 0
