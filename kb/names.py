"""Knowledge base names: safe as one folder name under ``kb_root`` on every platform."""

from __future__ import annotations

import unicodedata

from kb.errors import KnowledgeBaseError

MAX_NAME_CHARS = 64
_FORBIDDEN = set('/\\:*?"<>|')
# Device names on Windows, with or without an extension: such a folder cannot be created or
# opened there, so a kb_root copied to Windows would lose the knowledge base.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}
)


def validate_kb_name(name: str) -> str:
    """Return ``name`` if it can be a knowledge base folder, else raise KnowledgeBaseError.

    Allowed: 1-64 characters of letters (any script, e.g. 三国), digits, ``-``, ``_``, ``.``
    and spaces inside; no path separators, no ``..``, no leading dot or dash, no trailing dot,
    no control chars, no Windows device names (``CON``, ``NUL.txt``, ``COM1``...), and no ``.db``
    ending (``kb_root/milvus.db`` is the default Milvus Lite database).
    """
    problem = _name_problem(name)
    if problem:
        raise KnowledgeBaseError(
            f"invalid knowledge base name {name!r}: {problem}; use letters, digits, '-', '_' "
            f"(e.g. sanguo or 三国), at most {MAX_NAME_CHARS} characters"
        )
    return name


def is_valid_kb_name(name: str) -> bool:
    """Whether ``name`` could be a knowledge base (hidden ``.trash-*``/``.locks`` folders cannot)."""
    return _name_problem(name) is None


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name) > MAX_NAME_CHARS or len(name.encode("utf-8")) > 200:
        return "it is too long"
    if "\x00" in name or any(unicodedata.category(c).startswith("C") for c in name):
        return "it contains control characters"
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
