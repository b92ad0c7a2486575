"""The CRC32 a RAR 4 archive records for each member stored without compression.

libarchive (3.6) checks the CRC of a RAR 4 member it decompresses, but hands out a member stored
as is (method 0x30, what WinRAR writes for files it cannot shrink and with ``-m0``) without
checking it: a damaged stored member builds garbled text without an error. (A fuzz of 272 mutated
RAR 4 archives libarchive read found 270 with wrong bytes and no warning.) This module reads the
archive's file headers, only them, seeking past each member's data, so that ``kb.loaders.archives``
can check each stored member's bytes as they stream out; of a set of volumes too (``set_members``).

RAR 4 layout (RARLAB's technote): a 7-byte marker, then blocks of ``HEAD_CRC`` (2), ``HEAD_TYPE``
(1), ``HEAD_FLAGS`` (2), ``HEAD_SIZE`` (2), and for a file header (type 0x74) ``PACK_SIZE`` (4),
``UNP_SIZE`` (4), ``HOST_OS`` (1), ``FILE_CRC`` (4), ``FTIME`` (4), ``UNP_VER`` (1), ``METHOD``
(1), ``NAME_SIZE`` (2), ``ATTR`` (4), the high 32 bits of both sizes where flag 0x100 is set, then
the name; ``PACK_SIZE`` bytes of data follow the header. Other blocks with flag 0x8000 are followed
by ``ADD_SIZE`` (4, right after ``HEAD_SIZE``) bytes. Type 0x7B ends the archive.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER = b"Rar!\x1a\x07\x00"
STORED = 0x30
_FILE, _END = 0x74, 0x7B
_DIRECTORY = 0xE0  # flags & 0xE0 == 0xE0: a folder
_SPLIT_BEFORE, _SPLIT_AFTER = 0x01, 0x02  # continued from the previous volume / in the next one
_LONG = 0x8000
_LARGE = 0x100
MAX_HEADERS = 100_000  # a hostile archive may claim any number; past this, nothing is checked


@dataclass(frozen=True)
class Member:
    """One file header: the member's size and, where it is stored whole without compression, the
    CRC32 its bytes must have (None otherwise: libarchive checks those itself)."""

    size: int
    stored_crc: int | None


def file_members(path: Path) -> list[Member] | None:
    """The file headers of the RAR 4 archive at ``path`` in order (folders left out, as
    libarchive's regular entries come); None where the file is no RAR 4 archive or its headers
    cannot be walked (libarchive then says what is wrong). A caller matches each entry to its
    header by order and size, and checks only where both agree."""
    headers = _headers(path)
    return None if headers is None else _members(headers)


def set_members(paths: Sequence[Path]) -> list[Member] | None:
    """``file_members`` of a RAR 4 set of volumes, read as one archive (``kb.loaders.volumes``):
    a member split over volumes is one member, checked whole against the CRC its last part records
    (unrar's rule: an earlier part's header holds the CRC of that part's own bytes, the last part's
    that of the whole file). None where any volume is no RAR 4 volume (a 7-Zip split of a RAR is
    pieces of bytes, not volumes)."""
    headers: list[_Header] = []
    for path in paths:
        more = _headers(path)
        if more is None:
            return None
        headers += more
    return _members(headers)


@dataclass(frozen=True)
class _Header:
    """What a file header says, as ``_members`` needs it."""

    flags: int
    size: int
    crc: int
    stored: bool


def _headers(path: Path) -> list[_Header] | None:
    """The file headers (folders left out) of one RAR 4 archive or volume."""
    try:
        with path.open("rb") as stream:
            if stream.read(len(MARKER)) != MARKER:
                return None
            return _walk(stream)
    except (OSError, struct.error, ValueError):
        return None


def _members(headers: list[_Header]) -> list[Member]:
    """One ``Member`` per file: a part continued from the one before joins it; a file's CRC is
    checked where every part of it is stored and its last part is here (a part flagged continued
    with nothing before it, or one never finished, is not checked)."""
    members: list[Member] = []
    open_: tuple[int, bool] | None = None  # (size, stored so far) of a file continued in the next part
    for header in headers:
        if header.flags & _SPLIT_BEFORE and open_ is not None:
            size, stored = open_[0], open_[1] and header.stored
        else:
            if open_ is not None:
                members.append(Member(open_[0], None))
            size, stored = header.size, header.stored and not header.flags & _SPLIT_BEFORE
        if header.flags & _SPLIT_AFTER:
            open_ = (size, stored)
        else:
            members.append(Member(size, header.crc if stored else None))
            open_ = None
    if open_ is not None:
        members.append(Member(open_[0], None))
    return members


def _walk(stream) -> list[_Header] | None:  # type: ignore[no-untyped-def]
    headers: list[_Header] = []
    for _ in range(MAX_HEADERS):
        start = stream.tell()
        head = stream.read(7)
        if len(head) < 7:
            return headers  # no end block: a cut archive (refused before this is read: archive_ends.cut_short)
        _crc, kind, flags, size = struct.unpack("<HBHH", head)
        if size < 7:
            return None
        body = stream.read(size - 7)
        if len(body) < size - 7 or kind == _END:
            return headers
        data = 0
        if kind == _FILE:
            pack, unpacked, host, crc, _time, _version, method, _name, attr = struct.unpack_from("<IIBIIBBHI", body)
            if flags & _LARGE:
                high_pack, high_unpacked = struct.unpack_from("<II", body, 25)
                pack, unpacked = pack | high_pack << 32, unpacked | high_unpacked << 32
            data = pack
            if not _is_folder(flags, host, attr):
                headers.append(_Header(flags, unpacked, crc, method == STORED))
        elif flags & _LONG:
            data = struct.unpack_from("<I", body)[0]
        stream.seek(start + size + data)
    return None


def _is_folder(flags: int, host: int, attr: int) -> bool:
    """As libarchive decides it: the header's folder flags, or the host's own folder attribute
    (MS-DOS/Windows: 0x10; Unix: the mode's type bits)."""
    if flags & _DIRECTORY == _DIRECTORY:
        return True
    if host in (0, 2):
        return bool(attr & 0x10)
    return host == 3 and attr & 0o170000 == 0o040000
