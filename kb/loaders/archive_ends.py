"""Whether an archive's bytes are all there, told by the record the archive itself ends with.

libarchive reads a ZIP's members from their local headers and a RAR's blocks one after another, so an
archive cut short where a member starts reads as a whole, smaller archive, without an error: a split ZIP or
RAR (``资料.zip.001``, ``资料.rar.001``, ...) missing its last piece, or a single RAR cut short (a partial
download), would build a partial knowledge base. Each ends with a record of its own, which tells
(``cut_short``):

- ZIP: the end of central directory record, ``PK\\x05\\x06``, 22 bytes, then a comment of the length its
  last field says (up to 65535 bytes).
- RAR 4.x (signature ``Rar!\\x1a\\x07\\x00``): the end block, ``HEAD_CRC`` (2, CRC32's low 16 bits of the
  rest of the header), ``HEAD_TYPE`` (1) 0x7B, ``HEAD_FLAGS`` (2), ``HEAD_SIZE`` (2, little-endian): 7 bytes,
  more where its flags add fields (a data CRC, a volume number), all counted in ``HEAD_SIZE``.
- RAR 5.0 (signature ``Rar!\\x1a\\x07\\x01\\x00``): the end of archive header, CRC32 (4) of the rest, the
  header size (a vint: 7 bits a byte, low first, the high bit set on all but the last), then the type (a
  vint) 5, header flags and end of archive flags (vints): 8 bytes as WinRAR writes it.

Python's tarfile, likewise, takes the end of a plain tar's file where a member's header would start (or a
header cut short, or one it cannot read) for the archive's end; a tar's members are followed by zero blocks,
the end-of-archive marker (``tar_cut_short``).

The same record tells a piece of a ZIP that ``zip -s`` split (``book.z01``, ``book.z02``, ..., ``book.zip``:
pieces with disk numbers, which neither zipfile nor libarchive joins) from a whole ZIP (``split_zip_piece``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

ZIP_STARTS = (b"PK\x03\x04", b"PK\x07\x08PK\x03\x04", b"PK00PK\x03\x04")  # a ZIP; one zip -s wrote, in one piece
_SPLIT_MARKS = (b"PK\x07\x08", b"PK00")  # what zip -s writes first: the split (spanning) marker
_ZIP_END = b"PK\x05\x06"
_ZIP_END_SIZE = 22
_TAIL = _ZIP_END_SIZE + 0xFFFF  # the longest end record: a ZIP's with the longest comment (RAR's are shorter)
_RAR4_START = b"Rar!\x1a\x07\x00"
_RAR5_START = b"Rar!\x1a\x07\x01\x00"
_RAR4_END = b"\x7b"  # HEAD_TYPE of the end block
_RAR4_END_SIZE = 7
_RAR4_HEADERS_LOCKED = 0x0080  # the main header's MHD_PASSWORD (WinRAR -hp): every block header after it encrypted
_RAR5_END = b"\x05"  # the type of the end of archive header
_RAR5_LOCKED = 4  # an archive encryption header (-hp) right after the signature: every header after it encrypted
_ZIP_PIECE = re.compile(r"^.+\.z\d{2,}$", re.IGNORECASE)  # zip -s: book.z01, book.z02, ..., and book.zip last
_TAR_BLOCK = 512
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz (a compressed tar: its decompressor tells)


def cut_short(pieces: Sequence[Path]) -> bool:
    """Whether ``pieces``, an archive's bytes one after another (a split set's pieces, or one archive), are a ZIP or
    a RAR (by its first bytes, as it is read) that does not end with its own end record: cut short (a piece missing,
    a partial download), and libarchive would build from the members before the cut. A RAR with no end block at all
    is refused too: only very old WinRAR wrote those, on request (``-en``). Other formats are left to the reader (a
    7z's header is at its end, so a cut 7z cannot be read), and so is a RAR with encrypted headers, whose end record
    cannot be read here (the reader refuses it as password-protected)."""
    head = _head(pieces[0])
    if head.startswith(ZIP_STARTS):
        return _zip_end(_tail(pieces)) is None
    if head.startswith(_RAR4_START) and not _rar4_headers_locked(head):
        return _end_record(_tail(pieces), _RAR4_END, _rar4_end_fits) is None
    if head.startswith(_RAR5_START) and not _rar5_headers_locked(head):
        return _end_record(_tail(pieces), _RAR5_END, _rar5_end_fits) is None
    return False


def tar_cut_short(path: Path, *, members_end: int) -> bool:
    """Whether the plain (uncompressed) tar at ``path``, whose members end at byte ``members_end`` (where tarfile
    stopped reading headers: its ``offset``), is not followed there by a zero block, the end-of-archive marker
    (POSIX asks for two; GNU tar, bsdtar, 7-Zip, busybox and tarfile write them, padded or not to a 10240-byte
    record; one is enough to tell that nothing is missing): cut short where a member starts or inside its header,
    or damaged there, and tarfile would build from the members before. A compressed tar is left to its
    decompressor, which fails on a cut stream."""
    if _head(path).startswith(_COMPRESSED):
        return False
    with path.open("rb") as file:
        file.seek(members_end)
        return file.read(_TAR_BLOCK) != bytes(_TAR_BLOCK)


def split_zip_piece(path: Path, *, shown: str | None = None) -> str | None:
    """What ``path`` is, where it is one piece of a ZIP that ``zip -s`` split, and how to join it: a phrase for a
    one-line refusal (``shown``: the name it goes by, else its file name); None for anything else."""
    name = PurePosixPath(shown or path.name).name
    if not _is_split_zip_piece(path, name=name):
        return None
    stem = name.rsplit(".", 1)[0]
    return (f"one piece of a split ZIP ({stem}.z01, {stem}.z02, ..., {stem}.zip), which glmkb does not read: join "
            f"the pieces into one ZIP first (zip -s 0 {stem}.zip --out {stem}-whole.zip, or 7-Zip) and give that")


def _is_split_zip_piece(path: Path, *, name: str) -> bool:
    """By its bytes, the last piece (``book.zip``): its end record names a disk after the first (not 0xFFFF,
    which a ZIP64 writer may put there for "in the ZIP64 record": a whole archive); the first
    (``book.z01``): the split marker, and no end record (a ZIP that zip -s wrote in one piece starts with the
    marker too, and is whole). By its name, a middle one (``book.z02``): beside its ``book.zip``. Any other
    file is none, by its name and first bytes alone: every document ``sniff.detect_format`` is given asks."""
    split_mark = _head(path).startswith(_SPLIT_MARKS)
    middle = bool(_ZIP_PIECE.match(name))
    if not (split_mark or middle or name.lower().endswith(".zip")):
        return False
    tail = _tail([path])
    if (end := _zip_end(tail)) is not None:
        return 0 < _le(tail[end + 4:end + 6]) < 0xFFFF  # this disk's number, from 0; 0xFFFF: see ZIP64's record
    return split_mark or (middle and any(path.with_suffix(s).is_file() for s in (".zip", ".ZIP")))


def _head(path: Path, *, size: int = 32) -> bytes:
    """The first ``size`` bytes of ``path``: its signature and the header after it."""
    with path.open("rb") as file:
        return file.read(size)


def _tail(pieces: Sequence[Path], *, size: int = _TAIL) -> bytes:
    """The last ``size`` bytes of ``pieces`` read one after another (all of them where they hold fewer):
    the last piece may be shorter than the end record."""
    tail = b""
    for piece in reversed(pieces):
        with piece.open("rb") as file:
            file.seek(max(0, piece.stat().st_size - (size - len(tail))))
            tail = file.read() + tail
        if len(tail) >= size:
            break
    return tail


def _end_record(tail: bytes, marker: bytes, fits: Callable[[bytes, int], bool]) -> int | None:
    """The offset in ``tail`` of the last ``marker`` at which ``fits`` finds the archive's end record, running to
    the last byte of ``tail``; None where none does (member data may hold the marker: each one is tried)."""
    at = tail.rfind(marker)
    while at >= 0:
        if fits(tail, at):
            return at
        at = tail.rfind(marker, 0, at)
    return None


def _zip_end(tail: bytes) -> int | None:
    """Where the ZIP end of central directory record that ``tail`` ends with starts: its signature, then exactly
    the comment its length field says, to the last byte (a ZIP cut short ends in member data or its directory)."""
    return _end_record(tail, _ZIP_END, lambda tail, at: _le(tail[at + 20:at + 22]) == len(tail) - at - _ZIP_END_SIZE)


def _rar4_end_fits(tail: bytes, at: int) -> bool:
    """Whether the RAR 4 block whose ``HEAD_TYPE`` is at ``at`` is an end block that runs to the end of ``tail``:
    its ``HEAD_SIZE`` says so and its ``HEAD_CRC`` holds (a cut inside member data seldom passes both)."""
    start = at - 2
    size = _le(tail[at + 3:at + 5])
    return (start >= 0 and size >= _RAR4_END_SIZE and start + size == len(tail)
            and zlib.crc32(tail[at:]) & 0xFFFF == _le(tail[start:at]))


def _rar5_end_fits(tail: bytes, at: int) -> bool:
    """Whether the RAR 5 header whose type is at ``at`` is an end of archive header that runs to the end of
    ``tail``: the header size (a vint of 1 to 3 bytes just before the type) says so and its CRC32 holds."""
    return any(at - width >= 4 and _vint(tail[at - width:at]) == len(tail) - at
               and zlib.crc32(tail[at - width:]) == _le(tail[at - width - 4:at - width]) for width in (1, 2, 3))


def _rar4_headers_locked(head: bytes) -> bool:
    """Whether a RAR 4 archive's main header (after the 7-byte signature: CRC, type 0x73, flags) says that every
    block header after it is encrypted, the end block too."""
    return head[9:10] == b"\x73" and bool(_le(head[10:12]) & _RAR4_HEADERS_LOCKED)


def _rar5_headers_locked(head: bytes) -> bool:
    """Whether a RAR 5 archive's first header is the archive encryption header: every header after it is
    encrypted, the end of archive header too."""
    rest = head[12:]  # after the signature (8) and the header's CRC32 (4): its size (a vint), then its type
    width = next((n + 1 for n, byte in enumerate(rest[:3]) if byte < 0x80), None)
    return width is not None and rest[width:width + 1] == bytes([_RAR5_LOCKED])


def _vint(data: bytes) -> int | None:
    """The RAR 5 vint that is exactly ``data`` (7 bits a byte, low first, the high bit on all but the last);
    None where ``data`` is not one."""
    if not data or data[-1] & 0x80 or any(byte < 0x80 for byte in data[:-1]):
        return None
    return sum((byte & 0x7F) << (7 * n) for n, byte in enumerate(data))


def _le(data: bytes) -> int:
    """A little-endian unsigned number."""
    return int.from_bytes(data, "little")
