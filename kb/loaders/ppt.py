"""PowerPoint 97-2003 decks (.ppt): each slide's text as a page, in slide order ([MS-PPT]).

Why by hand: as for .doc, no permissively licensed Python library reads .ppt (python-pptx reads
only .pptx). olefile (BSD) opens the compound file (``kb.loaders.compound_file``); the
``PowerPoint Document`` stream is a tree of records (8-byte headers: version and instance, type,
length; containers hold records).

Which records are live: a deck saved more than once ("fast save") keeps old copies of slides in
the stream. The ``Current User`` stream points to the last ``UserEditAtom``; each edit points to
its persist directory (object id -> stream offset) and to the edit before it, newer entries
winning. The document container's slide list (``SlideListWithTextContainer``, instance 0) gives
the slides in order: a ``SlidePersistAtom`` per slide (its persist id) followed by the text of its
placeholders (``TextCharsAtom``: UTF-16; ``TextBytesAtom``: the low bytes of UTF-16, i.e.
Latin-1). Text boxes and table cells live in the slide's own drawing, as text atoms inside
``ClientTextbox`` records. Each slide's text is its placeholders' text, then its drawing's, one
paragraph per line (``\\r`` and vertical tabs end lines); a slide's first line is its heading.
Notes pages are not read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.compound_file import compound_file
from kb.loaders.document import Heading, LoadedDocument, text_blocks

_DOCUMENT = 0x03E8
_SLIDE = 0x03EE
_SLIDE_PERSIST = 0x03F3
_SLIDE_LIST = 0x0FF0
_TEXT_CHARS = 0x0FA0
_TEXT_BYTES = 0x0FA8
_USER_EDIT = 0x0FF5
_CURRENT_USER = 0x0FF6
_ENCRYPTED_TOKEN = 0xF3D1C4DF  # CurrentUserAtom.headerToken of an encrypted deck
_PERSIST_DIRECTORY = 0x1772
_MAX_EDITS = 10_000  # a chain of edits longer than this is a loop in a damaged file
_MAX_DEPTH = 64  # container nesting; real decks use under 10


def load_ppt(path: Path) -> LoadedDocument:
    """A .ppt deck's slides as pages, each titled by its first line."""
    with compound_file(path, kind="PowerPoint deck") as read:
        stream, user = read("PowerPoint Document"), read("Current User")
    try:
        slides = slide_texts(stream, user)
    except PermissionError as e:
        raise DocumentLoadError(f"{path} is password-protected; save it without a password") from e
    except (ValueError, KeyError, IndexError, struct.error) as e:
        raise DocumentLoadError(f"{path} is a damaged PowerPoint deck ({e}); save it again as .pptx") from e
    parts: list[str] = []
    headings: list[Heading] = []
    starts: list[int] = []
    length = 0
    for lines in slides:
        starts.append(length)
        if lines:
            headings.append(Heading(length, 1, lines[0]))
        text = "".join(line + "\n" for line in lines)
        parts.append(text)
        length += len(text)
    if not length:
        raise DocumentLoadError(f"{path} has no text on any slide; there is nothing to add")
    return LoadedDocument(path, "ppt", "ppt", text_blocks(parts), headings=tuple(headings), page_starts=tuple(starts))


def slide_texts(stream: bytes, user: bytes) -> list[list[str]]:
    """Each live slide's lines, in slide order."""
    if len(user) < 20 or struct.unpack_from("<H", user, 2)[0] != _CURRENT_USER:
        raise ValueError("no CurrentUserAtom")
    if struct.unpack_from("<I", user, 12)[0] == _ENCRYPTED_TOKEN:
        raise PermissionError("encrypted")
    persist = persist_directory(stream, struct.unpack_from("<I", user, 16)[0])
    document_ref = persist.pop(-1)
    kind, start, end = _record(stream, persist[document_ref])
    if kind != _DOCUMENT:
        raise ValueError("the persist directory points to no document")
    slides: list[tuple[int, list[str]]] = []  # (persist id, placeholder lines)
    for child, child_start, child_end in _children(stream, start, end):
        if child == _SLIDE_LIST and _instance(stream, child_start - 8) == 0:
            for atom, atom_start, atom_end in _children(stream, child_start, child_end):
                if atom == _SLIDE_PERSIST:
                    slides.append((struct.unpack_from("<I", stream, atom_start)[0], []))
                elif atom in (_TEXT_CHARS, _TEXT_BYTES) and slides:
                    slides[-1][1].extend(_lines(_text(stream, atom, atom_start, atom_end)))
    for ref, lines in slides:
        offset = persist.get(ref)
        kind, slide_start, slide_end = _record(stream, offset) if offset is not None else (None, 0, 0)
        if kind == _SLIDE:
            for atom, atom_start, atom_end in _walk(stream, slide_start, slide_end, 0):
                lines.extend(_lines(_text(stream, atom, atom_start, atom_end)))
    return [lines for _, lines in slides]


def persist_directory(stream: bytes, offset: int) -> dict[int, int]:
    """Persist id -> stream offset, over every edit from the current one back (newest wins);
    key -1 holds the current edit's document persist id."""
    directory: dict[int, int] = {}
    document_ref = None
    for _ in range(_MAX_EDITS):
        kind, start, _end = _record(stream, offset)
        if kind != _USER_EDIT:
            raise ValueError("no UserEditAtom where the edit chain points")
        last_edit, directory_offset, document = struct.unpack_from("<III", stream, start + 8)
        if document_ref is None:
            document_ref = document
        kind, entries, entries_end = _record(stream, directory_offset)
        if kind != _PERSIST_DIRECTORY:
            raise ValueError("no PersistDirectoryAtom where an edit points")
        at = entries
        while at + 4 <= entries_end:
            word = struct.unpack_from("<I", stream, at)[0]
            first, count = word & 0xFFFFF, word >> 20
            offsets = struct.unpack_from(f"<{count}I", stream, at + 4)
            for i, value in enumerate(offsets):
                directory.setdefault(first + i, value)
            at += 4 + 4 * count
        if last_edit == 0:
            directory[-1] = document_ref
            return directory
        offset = last_edit
    raise ValueError("the chain of edits does not end")


def _record(stream: bytes, offset: int) -> tuple[int, int, int]:
    """(type, content start, content end) of the record at ``offset``."""
    if offset < 0 or offset + 8 > len(stream):
        raise ValueError("a record outside the stream")
    kind, size = struct.unpack_from("<HI", stream, offset + 2)
    if offset + 8 + size > len(stream):
        raise ValueError("a record runs past the stream")
    return kind, offset + 8, offset + 8 + size


def _instance(stream: bytes, offset: int) -> int:
    return struct.unpack_from("<H", stream, offset)[0] >> 4


def _children(stream: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The records directly inside the container content ``[start, end)``."""
    at = start
    while at + 8 <= end:
        kind, child_start, child_end = _record(stream, at)
        if child_end > end:
            raise ValueError("a record runs past its container")
        yield kind, child_start, child_end
        at = child_end


def _walk(stream: bytes, start: int, end: int, depth: int) -> Iterator[tuple[int, int, int]]:
    """Every text atom under the container content ``[start, end)``, in order."""
    if depth > _MAX_DEPTH:
        raise ValueError("containers nested too deep")
    for kind, child_start, child_end in _children(stream, start, end):
        if kind in (_TEXT_CHARS, _TEXT_BYTES):
            yield kind, child_start, child_end
        elif stream[child_start - 8] & 0x0F == 0x0F:  # recVer 0xF: a container
            yield from _walk(stream, child_start, child_end, depth + 1)


def _text(stream: bytes, kind: int, start: int, end: int) -> str:
    data = stream[start:end]
    return data.decode("utf-16-le", errors="replace") if kind == _TEXT_CHARS else data.decode("latin-1")


def _lines(text: str) -> list[str]:
    """A text atom's paragraphs (``\\r``) and line breaks (vertical tab), spaces collapsed as the
    PPTX loader does, blank ones dropped."""
    lines = (" ".join(line.split()) for line in text.replace("\x0b", "\r").split("\r"))
    return [line for line in lines if line]
