"""Knowledge base names: safe as one folder name under ``kb_root`` on every platform."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from kb.errors import KnowledgeBaseError

MAX_NAME_CHARS = 64
_FORBIDDEN = set('/\\:*?"<>|')
# Device names on Windows, with or without an extension: such a folder cannot be created or
# opened there, so a kb_root copied to Windows would lose the knowledge base.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)
# Default-ignorable code points outside category C (Unicode's DerivedCoreProperties).
_IGNORABLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0")


def validate_kb_name(name: str) -> str:
    """Return ``name`` in NFC if it can be a knowledge base folder, else raise KnowledgeBaseError.

    Allowed: 1-64 characters of letters (any script, e.g. 三国), digits, ``-``, ``_``, ``.``
    and spaces inside; no path separators, no ``..``, no leading dot or dash, no trailing dot,
    no control or invisible characters, no Windows device names (``CON``, ``NUL.txt``,
    ``COM1``...), and no ``.db`` ending (``kb_root/milvus.db`` is the default Milvus Lite database).

    Every entry point (CLI, web UI, API) names knowledge bases through here, so "é" typed as one
    code point or as e + U+0301 is one knowledge base (glmkb #20.16: two folders that displayed
    identically).
    """
    if isinstance(name, str):
        name = unicodedata.normalize("NFC", name)
    problem = _name_problem(name)
    if problem:
        raise KnowledgeBaseError(
            f"invalid knowledge base name {name!r}: {problem}; use letters, digits, '-', '_' "
            f"(e.g. sanguo or 三国), at most {MAX_NAME_CHARS} characters"
        )
    return name


def name_skeleton(name: str) -> str:
    """How a name looks, for telling confusable names apart: NFKC and case-folded, so full-width
    ``ｓａｎｇｕｏ１``, ``SANGUO1`` and ``sanguo1`` (and compatibility forms such as ``ﬁ``) are one."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def confusable_name(name: str, existing: Iterable[str]) -> str | None:
    """An existing knowledge base whose name looks like ``name`` but is not it, if any."""
    skeleton = name_skeleton(name)
    return next((other for other in existing if other != name and name_skeleton(other) == skeleton), None)


def is_valid_kb_name(name: str) -> bool:
    """Whether ``name`` could be a knowledge base (hidden ``.trash-*``/``.locks`` folders cannot)."""
    return _name_problem(name) is None


def _invisible(c: str) -> bool:
    """Control, format (zero-width joiners, bidi controls), private-use or unassigned characters,
    and the default-ignorable letters and marks that render as nothing (Hangul fillers, variation
    selectors): a name holding one looks like another name."""
    return unicodedata.category(c).startswith("C") or c in _IGNORABLE or 0xFE00 <= ord(c) <= 0xFE0F \
        or 0xE0100 <= ord(c) <= 0xE01EF


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8")) > 200:
        return "it is too long"
    invisible = next((c for c in name if _invisible(c)), None)
    if invisible is not None:
        return f"it contains an invisible or control character (U+{ord(invisible):04X})"
    if any(c in _FORBIDDEN for c in name):
        return "it contains a path separator or a character not allowed in file names"
    if ".." in name:
        return "it contains '..'"
    if name[0] in ".-" or name != name.strip():
        return "it starts with '.' or '-' or has surrounding spaces"
    if name.endswith("."):
        return "it ends with '.' (Windows drops it)"
    if name.split(".", 1)[0].lower() in _RESERVED:
        return "it is a reserved device name on Windows (CON, NUL, COM1...)"
    if name.lower().endswith(".db"):
        return "names ending in '.db' are kept for Milvus Lite databases under kb_root"
    return None
