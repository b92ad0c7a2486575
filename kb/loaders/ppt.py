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
A table is a group of shapes whose group shape carries the ``tableProperties`` property (in its
tertiary property table): its cells are read by their places in the group (``ChildAnchor``), one
``a | b`` line per row, as the PPTX and ODP loaders write rows.
Then its speaker notes, as the PPTX loader puts them (``备注：`` before the first line): the
``SlideAtom`` names its notes by id, the notes list (instance 2) maps that id to the notes page's
persist id, and the page's text is read as a slide's. Fields (slide number, date, footer) are a
``*`` in the text with a meta-character atom beside it giving its place; they are dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.compound_file import compound_file
from kb.loaders.document import LoadedDocument
from kb.loaders.slides import SlidePages, with_notes_label

_DOCUMENT = 0x03E8
_SLIDE = 0x03EE
_SLIDE_ATOM = 0x03EF
_NOTES = 0x03F0
_SLIDE_PERSIST = 0x03F3
_SLIDE_LIST = 0x0FF0
_TEXT_CHARS = 0x0FA0
_TEXT_BYTES = 0x0FA8
_USER_EDIT = 0x0FF5
_CLIENT_TEXTBOX = 0xF00D
_GROUP, _SHAPE, _TERTIARY_OPT, _CHILD_ANCHOR = 0xF003, 0xF004, 0xF122, 0xF00F
_TABLE_PROPERTIES = 0x039F  # a group shape's property: the group is a table
# Meta-character atoms: a field (slide number, date, header, footer) at a text position.
_FIELDS = frozenset({0x0FD8, 0x0FF7, 0x0FF8, 0x0FF9, 0x0FFA, 0x1015})
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
    pages = SlidePages()
    for lines in slides:
        pages.new_slide()
        if lines:
            pages.title(lines[0])
        for line in lines[1:]:
            pages.lines(line)
    return pages.document(path, "ppt")


def slide_texts(stream: bytes, user: bytes) -> list[list[str]]:
    """Each live slide's lines, then its notes' lines (the first prefixed ``备注：``), in slide order."""
    if len(user) < 20 or struct.unpack_from("<H", user, 2)[0] != _CURRENT_USER:
        raise ValueError("no CurrentUserAtom")
    if struct.unpack_from("<I", user, 12)[0] == _ENCRYPTED_TOKEN:
        raise PermissionError("encrypted")
    persist = persist_directory(stream, struct.unpack_from("<I", user, 16)[0])
    document_ref = persist.pop(-1)
    kind, start, end = _record(stream, persist[document_ref])
    if kind != _DOCUMENT:
        raise ValueError("the persist directory points to no document")
    slides = slide_list(stream, start, end, instance=0)
    notes = {entry[1]: entry for entry in slide_list(stream, start, end, instance=2)}
    pages = []
    for ref, _slide_id, lines in slides:
        kind, slide_start, slide_end = _persisted(stream, persist, ref)
        notes_lines: list[str] = []
        if kind == _SLIDE:
            lines = lines + _drawing_lines(stream, slide_start, slide_end)
            note = notes.get(_notes_id(stream, slide_start, slide_end))
            if note is not None:
                note_kind, note_start, note_end = _persisted(stream, persist, note[0])
                notes_lines = note[2] + (_drawing_lines(stream, note_start, note_end) if note_kind == _NOTES else [])
        if notes_lines:
            notes_lines[0] = with_notes_label(notes_lines[0])
        pages.append(lines + notes_lines)
    return pages


def slide_list(stream: bytes, start: int, end: int, *, instance: int) -> list[tuple[int, int, list[str]]]:
    """``(persist id, slide or notes id, placeholder lines)`` of each entry in the document's list
    of that instance (0 slides, 2 notes pages), in order."""
    entries: list[tuple[int, int, list[str]]] = []
    for child, child_start, child_end in _children(stream, start, end):
        if child == _SLIDE_LIST and _instance(stream, child_start - 8) == instance:
            for atom, atom_start, atom_end in _children(stream, child_start, child_end):
                if atom == _SLIDE_PERSIST:
                    ref, _flags, _texts, slide_id = struct.unpack_from("<IIIi", stream, atom_start)
                    entries.append((ref, slide_id, []))
                elif atom in (_TEXT_CHARS, _TEXT_BYTES) and entries:
                    entries[-1][2].extend(_lines(_text(stream, atom, atom_start, atom_end)))
    return entries


def _persisted(stream: bytes, persist: dict[int, int], ref: int) -> tuple[int | None, int, int]:
    offset = persist.get(ref)
    return _record(stream, offset) if offset is not None else (None, 0, 0)


def _notes_id(stream: bytes, start: int, end: int) -> int | None:
    """The notes id in a slide's ``SlideAtom`` (geometry, placeholders, master id, then notes id);
    0 or none: no notes."""
    for kind, atom_start, atom_end in _children(stream, start, end):
        if kind == _SLIDE_ATOM and atom_end - atom_start >= 20:
            return struct.unpack_from("<i", stream, atom_start + 16)[0] or None
    return None


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


def _drawing_lines(stream: bytes, start: int, end: int) -> list[str]:
    """The lines of every text box under the container content ``[start, end)``, in drawing order."""
    return [line for text in _walk(stream, start, end, 0) for line in _lines(text)]


def _walk(stream: bytes, start: int, end: int, depth: int) -> Iterator[str]:
    """The text of every text atom under ``[start, end)``, in order; in a ``ClientTextbox``, without
    its fields' ``*`` placeholders."""
    if depth > _MAX_DEPTH:
        raise ValueError("containers nested too deep")
    fields: list[int] = []
    texts: list[str] = []
    for kind, child_start, child_end in _children(stream, start, end):
        if kind in (_TEXT_CHARS, _TEXT_BYTES):
            texts.append(_text(stream, kind, child_start, child_end))
        elif kind in _FIELDS and child_end - child_start >= 4:
            fields.append(struct.unpack_from("<i", stream, child_start)[0])
        elif stream[child_start - 8] & 0x0F == 0x0F:  # recVer 0xF: a container
            yield from texts
            texts = []
            if kind == _GROUP and _is_table(stream, child_start, child_end):
                yield from _table_rows(stream, child_start, child_end, depth + 1)
            else:
                yield from _walk(stream, child_start, child_end, depth + 1)
    if fields and len(texts) == 1 and stream[start - 6: start - 4] == struct.pack("<H", _CLIENT_TEXTBOX):
        texts = [_without_fields(texts[0], fields)]
    yield from texts


def _is_table(stream: bytes, start: int, end: int) -> bool:
    """Whether a group container's group shape (its first shape) says the group is a table."""
    for kind, shape_start, shape_end in _children(stream, start, end):
        if kind != _SHAPE:
            return False
        for prop, prop_start, prop_end in _children(stream, shape_start, shape_end):
            if prop == _TERTIARY_OPT:
                count = _instance(stream, prop_start - 8)
                for i in range(min(count, (prop_end - prop_start) // 6)):
                    opid, value = struct.unpack_from("<HI", stream, prop_start + 6 * i)
                    if opid & 0x3FFF == _TABLE_PROPERTIES and value:
                        return True
        return False
    return False


def _table_rows(stream: bytes, start: int, end: int, depth: int) -> Iterator[str]:
    """A table group's cells, one ``a | b`` line per row: cells ordered by their top, then left
    edge (``ChildAnchor``: left, top, right, bottom); a cell's own lines joined by spaces. A cell is
    a shape with a text box (an empty cell's has no text); the group shape and the border lines
    are passed over."""
    cells: list[tuple[int, int, str]] = []
    for kind, shape_start, shape_end in _children(stream, start, end):
        if kind != _SHAPE:
            continue
        children = list(_children(stream, shape_start, shape_end))
        place = next(((top, left) for child, child_start, child_end in children
                      if child == _CHILD_ANCHOR and child_end - child_start >= 16
                      for left, top in [struct.unpack_from("<ii", stream, child_start)]), None)
        if place is not None and any(child == _CLIENT_TEXTBOX for child, _, _ in children):  # not a border line
            text = " ".join(line for text in _walk(stream, shape_start, shape_end, depth) for line in _lines(text))
            cells.append((*place, text))
    for top in sorted({top for top, _, _ in cells}):
        row = [text for _, _, text in sorted(c for c in cells if c[0] == top)]
        if any(row):  # an empty cell keeps its place, an empty row is left out (as in a PPTX)
            yield " | ".join(row)


def _without_fields(text: str, positions: list[int]) -> str:
    """``text`` without the ``*`` that stands at each field position."""
    drop = {at for at in positions if 0 <= at < len(text) and text[at] == "*"}
    return "".join(ch for i, ch in enumerate(text) if i not in drop)


def _text(stream: bytes, kind: int, start: int, end: int) -> str:
    data = stream[start:end]
    return data.decode("utf-16-le", errors="replace") if kind == _TEXT_CHARS else data.decode("latin-1")


def _lines(text: str) -> list[str]:
    """A text atom's paragraphs (``\\r``) and line breaks (vertical tab), spaces collapsed as the
    PPTX loader does, blank ones dropped."""
    lines = (" ".join(line.split()) for line in text.replace("\x0b", "\r").split("\r"))
    return [line for line in lines if line]
