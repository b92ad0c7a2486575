"""Read text documents and decode them whatever their (Chinese) encoding.

Chinese novels circulate as UTF-8, UTF-8 with BOM, GB18030/GBK, Big5 and UTF-16; we check
byte-order marks first, then strict UTF-8, then let charset-normalizer choose between the
legacy Chinese code pages (it scores decoded text by character frequency, which tells GBK
from Big5 even on a sentence or two). Binary files and anything else are refused.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import charset_normalizer

from kb.errors import DocumentLoadError

# Checked in order: UTF-32 LE's BOM starts with UTF-16 LE's.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF"),
    (b"PK\x03\x04", "a ZIP archive (docx/epub/zip)"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office file (doc/xls)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7z archive"),
    (b"\x7fELF", "an executable"),
    (b"SQLite format 3", "an SQLite database"),
)
# Legacy encodings a Chinese text file may be in, besides UTF-8 (GB18030 is a superset of GBK/GB2312).
LEGACY_ENCODINGS: tuple[str, ...] = ("gb18030", "big5")
_COMMON_PUNCTUATION = frozenset("，。、；：？！“”‘’（）《》〈〉【】「」『』…—·～　")
_FIX = "save it as UTF-8 text (.txt or .md) and try again"


def load_text(path: str | os.PathLike[str]) -> str:
    """The decoded text of a ``.txt``/``.md`` file (BOM removed, newlines untouched)."""
    text, _ = load_text_with_encoding(path)
    return text


def load_text_with_encoding(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(text, encoding)`` of a text file; raises DocumentLoadError for missing/empty/binary input."""
    data = read_bytes(Path(path))
    return decode_bytes(data, name=str(path))


def read_bytes(path: Path) -> bytes:
    """The raw bytes of ``path``, with one-line errors for the usual mistakes."""
    if not path.exists():
        raise DocumentLoadError(f"file not found: {path}")
    if path.is_dir():
        raise DocumentLoadError(f"{path} is a folder; give the text files inside it (e.g. {path}/*.txt)")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DocumentLoadError(f"cannot read {path}: {e.strerror or e}") from e


def decode_bytes(data: bytes, *, name: str = "<input>") -> tuple[str, str]:
    """Detect the encoding of ``data`` and decode it: ``(text, encoding)``."""
    if not data.strip():
        raise DocumentLoadError(f"{name} is empty; there is no text to add")
    text, encoding = _decode_with_bom(data, name=name) or _decode_without_bom(data, name=name)
    if not text.strip():
        raise DocumentLoadError(f"{name} is empty; there is no text to add")
    return text, encoding


def _decode_with_bom(data: bytes, *, name: str) -> tuple[str, str] | None:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as e:
                raise DocumentLoadError(
                    f"{name} starts with a {encoding} byte-order mark but is not valid {encoding} "
                    f"(byte {e.start}); {_FIX}"
                ) from e
            return text.removeprefix("\ufeff"), encoding
    return None


def _decode_without_bom(data: bytes, *, name: str) -> tuple[str, str]:
    _refuse_binary(data, name=name)
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    decodings = {enc: text for enc in LEGACY_ENCODINGS if (text := _strict_decode(data, enc)) is not None}
    if not decodings:
        raise DocumentLoadError(
            f"cannot decode {name}: it is not UTF-8, UTF-16 (with BOM), GB18030/GBK or Big5 text; {_FIX}"
        )
    if len(decodings) == 1:
        [(encoding, text)] = decodings.items()
        return text, encoding
    # Both decoders accept the bytes. Simplified Chinese read as GBK consists of GB2312's
    # common characters only, which Big5 bytes almost never produce: decisive even for a
    # few characters, where charset-normalizer has too little text to judge.
    if _is_common_simplified(decodings["gb18030"]):
        return decodings["gb18030"], "gb18030"
    encoding = _charset_normalizer_choice(data) or "gb18030"
    return decodings[encoding], encoding


def _strict_decode(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _is_common_simplified(text: str) -> bool:
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
    if b"\x00" in data[:65536]:
        raise DocumentLoadError(
            f"{name} looks binary (it contains NUL bytes; UTF-16 text needs a byte-order mark); {_FIX}"
        )
