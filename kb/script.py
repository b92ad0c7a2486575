"""Simplified and traditional Chinese as one script, for matching (OpenCC ``t2s``).

Many Chinese texts circulate in traditional characters (Hong Kong and Taiwan editions, Big5 files of
金庸's novels) and readers ask in either script. Where glmkb matches words (BM25 tokens,
``kb.tokenizing``; person names, ``kb.characters``) it matches them folded to simplified characters;
what it stores and cites stays as written (person names, found folded, show in simplified characters).
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["SCRIPT", "fold_keeping_offsets", "fold_script"]

SCRIPT = "t2s"  # OpenCC's configuration; a knowledge base's manifest records it (kb.build.BM25_SETTINGS)
_LOCK = threading.Lock()
_converter: Any = None


def fold_script(text: str) -> str:
    """``text`` in simplified characters (OpenCC ``t2s``, phrases included)."""
    global _converter
    if _converter is None:
        with _LOCK:
            if _converter is None:
                import opencc

                _converter = opencc.OpenCC(SCRIPT)
    return _converter.convert(text)


def fold_keeping_offsets(text: str) -> str:
    """``fold_script(text)`` where it keeps every character's offset (one character for one, as for the
    corpora measured here), else ``text`` as it is: for code that cites offsets into the text."""
    folded = fold_script(text)
    return folded if len(folded) == len(text) else text
