"""Read text documents and decode them whatever their (Chinese) encoding, in bounded memory.

Chinese novels circulate as UTF-8, UTF-8 with BOM, GB18030/GBK, Big5 and UTF-16; we check
byte-order marks first, then strict UTF-8, then let charset-normalizer choose between the
legacy Chinese code pages (it scores decoded text by character frequency, which tells GBK
from Big5 even on a sentence or two). Binary files and anything else are refused.

A UTF-8 file that is almost right (its last character cut off by a truncated download or a
split by size, or a handful of bad bytes among plenty of valid UTF-8 Chinese) is read with
the bad bytes replaced by U+FFFD and a warning naming how many and where: such bytes read as
GB18030 give gibberish, and refusing the file helps nobody.

Files are never read whole: :func:`open_text_file` checks the encoding in passes over blocks
of the file (strict incremental decoders, so a multi-byte character split between two reads is
fine), and :meth:`TextFile.blocks` then yields the decoded text block by block. In-memory
uploads (:func:`decode_bytes`) go through the very same block-wise code, so a file and its
bytes are always decoded alike.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import charset_normalizer

from kb.errors import DocumentLoadError

# Bytes read (and decoded) at a time: memory stays a small multiple of this, whatever the file's size.
BLOCK_BYTES = 1 << 20

# Checked in order: UTF-32 LE's BOM starts with UTF-16 LE's.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# The codec of the bytes after each BOM: the BOM is skipped, not decoded, so error offsets are file offsets.
_BODY_CODECS: dict[bytes, str] = {
    codecs.BOM_UTF32_LE: "utf-32-le",
    codecs.BOM_UTF32_BE: "utf-32-be",
    codecs.BOM_UTF8: "utf-8",
    codecs.BOM_UTF16_LE: "utf-16-le",
    codecs.BOM_UTF16_BE: "utf-16-be",
}
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF"),
    (b"PK\x03\x04", "a ZIP archive (docx/pptx/xlsx/epub/zip)"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office file (doc/ppt/xls)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7z archive"),
    (b"\x7fELF", "an executable"),
    (b"SQLite format 3", "an SQLite database"),
)
# A NUL byte among this many leading bytes marks a file without BOM as binary.
_SNIFF_BYTES = 65536
# charset-normalizer judges the whole input up to this size, and a prefix of this size beyond it.
_SAMPLE_BYTES = 1 << 20
# Every trail byte of a GBK/GB18030/Big5 character is >= 0x30, so a byte below 0x30 always ends a
# character in both encodings: a sample cut after one never splits a character.
_POSSIBLE_TRAIL_BYTES = bytes(range(0x30, 0x100))
# Legacy encodings a Chinese text file may be in, besides UTF-8 (GB18030 is a superset of GBK/GB2312).
LEGACY_ENCODINGS: tuple[str, ...] = ("gb18030", "big5")
_COMMON_PUNCTUATION = frozenset("，。、；：？！“”‘’（）《》〈〉【】「」『』…—·～　")
_FIX = "save it as UTF-8 text (.txt or .md) and try again"
# "Almost right" UTF-8: at most this many bad byte sequences, and at least this many valid
# multi-byte characters per bad one (GBK read as UTF-8 fails on nearly every character, so real
# legacy files are far past both limits).
MAX_REPLACED = 16
_VALID_PER_BAD = 50

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextFile:
    """A text file whose encoding was detected and checked over the whole file."""

    path: Path
    encoding: str  # "utf-8", "utf-8-sig", "utf-16", "utf-32", "gb18030" or "big5"
    # (size, mtime_ns) of the file that was checked; blocks() refuses a file that no longer matches.
    stamp: tuple[int, int] | None = field(default=None, compare=False, repr=False)
    # (file offset, length) of each bad byte sequence of an almost-right UTF-8 file (read as U+FFFD).
    replaced: tuple[tuple[int, int], ...] = ()

    def blocks(self, *, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
        """The decoded text in pieces of about ``block_bytes`` bytes each, never ``""``; joined,
        exactly :func:`load_text`'s text (BOM removed). Raises DocumentLoadError when the file
        is no longer the one whose encoding was checked."""
        _check_block_bytes(block_bytes)
        try:
            with self.path.open("rb") as stream:
                self._check_unchanged(stream)
                plan = _plan_for(self.encoding, stream.read(4), lenient=bool(self.replaced))
                if plan is None:
                    raise self._changed(f"it no longer starts with a {self.encoding} byte-order mark")
                yield from _decode(stream, plan, block_bytes=block_bytes)
                self._check_unchanged(stream)
        except _InvalidBytes as e:
            raise self._changed(f"it is no longer valid {self.encoding} at byte {e.position}") from e
        except OSError as e:
            raise self._changed(f"cannot read it: {e.strerror or e}") from e

    def _check_unchanged(self, stream: BinaryIO) -> None:
        if self.stamp is not None and _stamp(stream) != self.stamp:
            raise self._changed("its size or modification time changed")

    def _changed(self, why: str) -> DocumentLoadError:
        return DocumentLoadError(f"{self.path} changed while it was being read ({why}); try again")


def open_text_file(path: str | os.PathLike[str], *, block_bytes: int = BLOCK_BYTES) -> TextFile:
    """Detect and check the encoding of a ``.txt``/``.md`` file, reading it in blocks of
    ``block_bytes`` (memory does not grow with the file); DocumentLoadError for
    missing/empty/binary/undecodable files."""
    _check_block_bytes(block_bytes)
    file = Path(path)
    _check_is_file(file)
    try:
        with file.open("rb") as stream:
            stamp = _stamp(stream)
            encoding, replaced = _detect_encoding(stream, name=str(path), block_bytes=block_bytes)
            if _stamp(stream) != stamp:
                raise DocumentLoadError(f"{file} changed while it was being read; try again")
    except OSError as e:
        raise DocumentLoadError(f"cannot read {file}: {e.strerror or e}") from e
    if replaced:
        logger.warning(replaced_warning(file.name, replaced))
    return TextFile(file, encoding, stamp, replaced)


def replaced_warning(name: str, replaced: tuple[tuple[int, int], ...]) -> str:
    """One line for an almost-right UTF-8 file: how many bad bytes were replaced, and where."""
    where = ", ".join(str(offset) for offset, _ in replaced[:5]) + (", ..." if len(replaced) > 5 else "")
    count = sum(length for _, length in replaced)
    return (
        f"{name} is not quite valid UTF-8: {count} bad byte{'s' if count > 1 else ''} replaced with U+FFFD "
        f"(at byte offset{'s' if len(replaced) > 1 else ''} {where}); the rest is read as UTF-8"
    )


def load_text(path: str | os.PathLike[str]) -> str:
    """The decoded text of a ``.txt``/``.md`` file (BOM removed, newlines untouched)."""
    text, _ = load_text_with_encoding(path)
    return text


def load_text_with_encoding(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(text, encoding)`` of a text file; raises DocumentLoadError for missing/empty/binary input."""
    text_file = open_text_file(path)
    return "".join(text_file.blocks()), text_file.encoding


def read_bytes(path: Path) -> bytes:
    """The raw bytes of ``path``, with one-line errors for the usual mistakes."""
    _check_is_file(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise DocumentLoadError(f"cannot read {path}: {e.strerror or e}") from e


def decode_bytes(data: bytes, *, name: str = "<input>") -> tuple[str, str]:
    """Detect the encoding of ``data`` and decode it: ``(text, encoding)`` (the same code as files)."""
    stream = io.BytesIO(data)
    encoding, replaced = _detect_encoding(stream, name=name, block_bytes=BLOCK_BYTES)
    if replaced:
        logger.warning(replaced_warning(name, replaced))
    plan = _plan_for(encoding, data[:4], lenient=bool(replaced))
    assert plan is not None  # the bytes cannot have changed since their encoding was detected
    return "".join(_decode(stream, plan, block_bytes=BLOCK_BYTES)), encoding


# --- detection ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """How to decode a stream: skip ``skip`` BOM bytes, decode the rest with ``codec``."""

    codec: str
    skip: int = 0
    errors: str = "strict"


@dataclass
class _Scan:
    """What one pass over a whole decoded text found."""

    blank: bool = True  # nothing but whitespace
    common_simplified: bool = True  # _is_common_simplified holds (only tracked when asked for)


class _InvalidBytes(Exception):
    """The stream is not valid in the codec tried, first at file offset ``position``."""

    def __init__(self, position: int) -> None:
        super().__init__(f"invalid bytes at offset {position}")
        self.position = position


def _detect_encoding(stream: BinaryIO, *, name: str, block_bytes: int) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The encoding of the whole stream, checked strictly in passes of ``block_bytes`` blocks,
    and the offsets of the bad bytes replaced in an almost-right UTF-8 stream."""
    head = stream.read(_SNIFF_BYTES)
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            _check_bom_text(stream, bom, encoding, name=name, block_bytes=block_bytes)
            return encoding, ()
    _refuse_binary(head, name=name)
    if (utf8 := _strict_scan(stream, _Plan("utf-8"), block_bytes=block_bytes)) is not None:
        _refuse_blank(utf8, name=name)
        return "utf-8", ()
    if replaced := _almost_utf8(stream, block_bytes=block_bytes):
        return "utf-8", replaced
    scans = {
        encoding: scan
        for encoding in LEGACY_ENCODINGS
        if (scan := _strict_scan(stream, _Plan(encoding), block_bytes=block_bytes, simplified=encoding == "gb18030"))
        is not None
    }
    if not scans:
        raise DocumentLoadError(
            f"cannot decode {name}: it is not UTF-8, UTF-16 (with BOM), GB18030/GBK or Big5 text; {_FIX}"
        )
    if len(scans) == 1:
        [encoding] = scans
    # Both decoders accept the bytes. Simplified Chinese read as GBK consists of GB2312's
    # common characters only, which Big5 bytes almost never produce: decisive even for a
    # few characters, where charset-normalizer has too little text to judge.
    elif scans["gb18030"].common_simplified:
        encoding = "gb18030"
    else:
        encoding = _charset_normalizer_choice(_charset_sample(stream)) or "gb18030"
    _refuse_blank(scans[encoding], name=name)
    return encoding, ()


_damage = threading.local()


class _TooDamaged(Exception):
    """More bad bytes than an almost-right UTF-8 file has."""


def _record_bad_bytes(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler for :func:`_almost_utf8`: notes where each bad sequence starts."""
    assert isinstance(error, UnicodeDecodeError)
    _damage.found.append((_damage.base + error.start, error.end - error.start))
    if len(_damage.found) > MAX_REPLACED:
        raise _TooDamaged  # stop at once: a legacy file read as UTF-8 fails on every character
    return "\ufffd", error.end


codecs.register_error("glmkb-record", _record_bad_bytes)


def _almost_utf8(stream: BinaryIO, *, block_bytes: int) -> tuple[tuple[int, int], ...]:
    """``(file offset, length)`` of the bad sequences of a stream that is UTF-8 but for a few of them
    (see MAX_REPLACED); ``()`` where it is not almost-right UTF-8."""
    stream.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")("glmkb-record")
    offsets: list[tuple[int, int]] = []
    multibyte = 0
    offset = 0
    final = False
    _damage.found = []
    try:
        while not final:
            block = stream.read(block_bytes)
            final = not block
            _damage.base = offset - len(decoder.getstate()[0])
            _damage.found = offsets
            try:
                piece = decoder.decode(block, final)
            except _TooDamaged:
                return ()
            multibyte += len(piece) - len(piece.encode("ascii", "ignore")) - piece.count("\ufffd")
            offset += len(block)
    finally:
        _damage.found = []
    if not offsets or multibyte < _VALID_PER_BAD * len(offsets):
        return ()
    return tuple(offsets)


def _check_bom_text(stream: BinaryIO, bom: bytes, encoding: str, *, name: str, block_bytes: int) -> None:
    try:
        scan = _scan(stream, _Plan(_BODY_CODECS[bom], skip=len(bom)), block_bytes=block_bytes)
    except _InvalidBytes as e:
        raise DocumentLoadError(
            f"{name} starts with a {encoding} byte-order mark but is not valid {encoding} "
            f"(byte {e.position}); {_FIX}"
        ) from e
    _refuse_blank(scan, name=name)


def _refuse_blank(scan: _Scan, *, name: str) -> None:
    if scan.blank:
        raise DocumentLoadError(f"{name} is empty; there is no text to add")


def _strict_scan(stream: BinaryIO, plan: _Plan, *, block_bytes: int, simplified: bool = False) -> _Scan | None:
    """The scan of the whole stream in ``plan``, or None where it is not valid in it."""
    try:
        return _scan(stream, plan, block_bytes=block_bytes, simplified=simplified)
    except _InvalidBytes:
        return None


def _scan(stream: BinaryIO, plan: _Plan, *, block_bytes: int, simplified: bool = False) -> _Scan:
    """One pass over the text: is it blank, and (``simplified``) all common simplified Chinese?"""
    scan = _Scan()
    check = _CommonSimplifiedCheck() if simplified else None
    for piece in _decode(stream, plan, block_bytes=block_bytes):
        if scan.blank and not piece.isspace():
            scan.blank = False
        if check is not None:
            check.update(piece)
    if check is not None:
        scan.common_simplified = check.holds
    return scan


def _decode(stream: BinaryIO, plan: _Plan, *, block_bytes: int) -> Iterator[str]:
    """The stream's text from ``plan.skip`` on, decoded strictly block by block; a BOM-marked text
    also loses one leading U+FEFF. Raises _InvalidBytes at the first byte that does not decode."""
    stream.seek(plan.skip)
    decoder = codecs.getincrementaldecoder(plan.codec)(plan.errors)
    offset = plan.skip  # file offset of the next block
    drop_bom_char = plan.skip > 0
    final = False
    while not final:
        block = stream.read(block_bytes)
        final = not block
        pending = len(decoder.getstate()[0])  # bytes of a character begun in earlier blocks
        try:
            piece = decoder.decode(block, final)
        except UnicodeDecodeError as e:  # e.start counts from the pending bytes
            raise _InvalidBytes(offset - pending + e.start) from e
        offset += len(block)
        if drop_bom_char and piece:
            piece, drop_bom_char = piece.removeprefix("\ufeff"), False
        if piece:
            yield piece


def _plan_for(encoding: str, head: bytes, *, lenient: bool = False) -> _Plan | None:
    """How to decode a stream in ``encoding`` that starts with ``head`` (at least 4 bytes where it
    has them); None where a BOM encoding's stream does not start with its BOM. ``lenient``: an
    almost-right UTF-8 stream, its bad bytes read as U+FFFD."""
    if encoding == "utf-8" and lenient:
        return _Plan(encoding, errors="replace")
    if encoding == "utf-8" or encoding in LEGACY_ENCODINGS:
        return _Plan(encoding)
    if encoding not in {bom_encoding for _, bom_encoding in _BOMS}:
        raise ValueError(f"unsupported text encoding {encoding!r}")
    bom = next((bom for bom, _ in _BOMS if head.startswith(bom)), None)
    if bom is None or dict(_BOMS)[bom] != encoding:
        return None
    return _Plan(_BODY_CODECS[bom], skip=len(bom))


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise DocumentLoadError(f"file not found: {path}")
    if path.is_dir():
        raise DocumentLoadError(f"{path} is a folder; give the text files inside it (e.g. {path}/*.txt)")


def _check_block_bytes(block_bytes: int) -> None:
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be at least 1, not {block_bytes}")


def _stamp(stream: BinaryIO) -> tuple[int, int]:
    stat = os.fstat(stream.fileno())
    return stat.st_size, stat.st_mtime_ns


class _CommonSimplifiedCheck:
    """_is_common_simplified over a text seen piece by piece (each distinct character judged once)."""

    def __init__(self) -> None:
        self.holds = True
        self._judged: set[str] = set()

    def update(self, piece: str) -> None:
        if self.holds:
            new = set(piece).difference(self._judged)
            self.holds = _is_common_simplified(new)
            self._judged |= new


def _is_common_simplified(text: Iterable[str]) -> bool:
    """Every non-ASCII character is a GB2312 ideograph or common CJK punctuation."""
    for char in text:
        if char.isascii() or char in _COMMON_PUNCTUATION:
            continue
        if not ("\u4e00" <= char <= "\u9fff"):
            return False
        try:
            char.encode("gb2312")
        except UnicodeEncodeError:
            return False
    return True


def _charset_sample(stream: BinaryIO) -> bytes:
    """What charset-normalizer judges: the whole stream up to _SAMPLE_BYTES, else its first
    _SAMPLE_BYTES cut after the last byte that ends a character in both legacy encodings."""
    stream.seek(0)
    sample = stream.read(_SAMPLE_BYTES)
    if not stream.read(1):
        return sample
    return sample.rstrip(_POSSIBLE_TRAIL_BYTES) or _cut_at_common_boundary(sample)


def _cut_at_common_boundary(sample: bytes) -> bytes:
    """``sample`` without a character cut in two at its end, in either legacy encoding (for text
    without a single ASCII space, control or punctuation byte: charset-normalizer refuses an
    encoding whose last character is incomplete)."""
    end = len(sample)
    for _ in range(8):  # each round drops one partial character; two encodings agree within a few
        pending = max(_pending_bytes(memoryview(sample)[:end], encoding) for encoding in LEGACY_ENCODINGS)
        if not pending:
            return sample[:end]
        end -= pending
    return sample


def _pending_bytes(data: memoryview, encoding: str) -> int:
    """How many trailing bytes of ``data`` begin a character that ``data`` does not finish."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="ignore")
    decoder.decode(data, False)
    return len(decoder.getstate()[0])


def _charset_normalizer_choice(data: bytes) -> str | None:
    """charset-normalizer's pick among the legacy encodings (retrying leniently for short,
    punctuation-heavy texts it would otherwise give up on)."""
    for threshold in (0.2, 0.6):
        best = charset_normalizer.from_bytes(data, cp_isolation=list(LEGACY_ENCODINGS), threshold=threshold).best()
        if best is not None:
            name = codecs.lookup(best.encoding).name
            return name if name in LEGACY_ENCODINGS else None
    return None


def _refuse_binary(data: bytes, *, name: str) -> None:
    for magic, kind in _BINARY_MAGIC:
        if data.startswith(magic):
            raise DocumentLoadError(f"{name} is {kind}, not a text file; {_FIX}")
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise DocumentLoadError(
            f"{name} looks binary (it contains NUL bytes; UTF-16 text needs a byte-order mark); {_FIX}"
        )
