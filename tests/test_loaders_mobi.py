"""Kindle books (.mobi, .azw3) and PalmDOC e-books: real calibre-made books against the EPUB they
were converted from (read by the EPUB loader: differential), PalmDOC's decompression, and
refusals. tests/data/mobi was written by calibre 6.13's ``ebook-convert`` (MOBI 6 with
``--mobi-file-type old``, and KF8) from the EPUB ``write_book`` makes; ``python -m
tests.test_loaders_mobi`` remakes them (needs calibre, which CI does not install)."""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from kb.loaders import SUFFIX_FORMATS, detect_format, open_document
from kb.loaders.mobi import palmdoc_decompress
from tests.fixtures.documents import SourceChapter, write_epub
from tests.helpers import ingest_hits
from tests.test_loaders_hostile import refused

FIXTURES = Path(__file__).parent / "data" / "mobi"
_NUMBERS = "一二三四五六七八九十"


def write_book(path: Path) -> Path:
    """Ten chapters of invented text (repeated phrases: PalmDOC back-references), as EPUB 3."""
    chapters = [
        SourceChapter(f"第{_NUMBERS[i - 1]}章 古寺{i}", [
            f"第{i}章的第{j}段：山中有一座古寺，寺里住着一位老僧和{i + j}个小沙弥。每天清晨，他们在钟声里起身，"
            "扫雪、担水、诵经，直到日落。" for j in range(1, 6)])
        for i in range(1, 11)
    ]
    return write_epub(path, chapters)


@pytest.mark.parametrize("name", ["book.mobi", "book.azw3"])
def test_a_kindle_book_reads_as_the_epub_it_was_made_from(name: str, tmp_path: Path) -> None:
    """MOBI 6 (Mobipocket markup, no heading tags) and KF8 (XHTML skeletons and fragments) give
    the EPUB's text exactly, without the table of contents calibre appends; KF8 keeps the
    headings. Both books' text records carry trailing entries (multibyte overlap and one more)."""
    book = open_document(FIXTURES / name)
    epub = open_document(write_book(tmp_path / "book.epub"))
    assert (book.format, detect_format(FIXTURES / name)) == ("mobi", "mobi")
    assert "".join(book.blocks()) == "".join(epub.blocks())
    if name == "book.azw3":
        assert [h.title for h in book.headings] == [h.title for h in epub.headings]  # <h2>s; the EPUB's from its nav


def test_chapters_of_a_mobi_come_from_its_chapter_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hits = ingest_hits([FIXTURES / "book.mobi"], "老僧 小沙弥 15个", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "15个" in h["text"])
    assert hit["chapter"] == 10 and hit["chapter_title"] == "古寺10"


def test_palmdoc_decompression_of_each_kind_of_byte() -> None:
    """0x00 and 0x09-0x7F stand for themselves, 0x01-0x08 copy that many literal bytes,
    0xC0-0xFF are a space plus the byte xor 0x80, 0x80-0xBF start a back-reference
    (distance 11 bits, length 3 bits + 3), which may overlap what it writes."""
    back = 0x8000 | (4 << 3) | (7 - 3)  # 7 bytes from 4 back: "abcd" repeated into "abcdabc"
    record = b"abcd" + struct.pack(">H", back) + b"\x02\xe4\xbd" + bytes([0xC0 | ord("x") ^ 0x80 ^ 0x80]) + b"\x00\t"
    assert palmdoc_decompress(b"abcd" + struct.pack(">H", back)) == b"abcdabcdabc"
    assert palmdoc_decompress(record) == b"abcdabcdabc\xe4\xbd x\x00\t"
    with pytest.raises(ValueError, match="before the record's start"):
        palmdoc_decompress(b"a" + struct.pack(">H", 0x8000 | (5 << 3)))


def test_a_palmdoc_text_database_reads_as_text(tmp_path: Path) -> None:
    """A ``TEXtREAd`` database (PalmDOC e-books of the Palm era, .pdb/.prc): plain text in the
    device's encoding (here GBK), uncompressed, decoded as a text file is."""
    text = ("第一回 山寺\n老僧扫雪。\n" * 50).encode("gbk")
    path = tmp_path / "old.pdb"
    path.write_bytes(_palm_database(b"TEXtREAd", text))
    assert detect_format(path) == "mobi" and SUFFIX_FORMATS[".pdb"] == frozenset({"mobi"})
    assert "".join(open_document(path).blocks()) == text.decode("gbk")


def test_kindle_refusals(tmp_path: Path) -> None:
    data = (FIXTURES / "book.mobi").read_bytes()
    first = struct.unpack_from(">I", data, 78)[0]  # record 0: the PalmDOC header
    (tmp_path / "cut.mobi").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.mobi", "damaged e-book")
    drm = bytearray(data)
    struct.pack_into(">H", drm, first + 12, 2)  # encryption: Mobipocket DRM
    (tmp_path / "drm.azw").write_bytes(bytes(drm))
    refused(tmp_path / "drm.azw", "DRM-protected")
    huff = bytearray(data)
    struct.pack_into(">H", huff, first, 17480)
    (tmp_path / "huff.mobi").write_bytes(bytes(huff))
    refused(tmp_path / "huff.mobi", "HUFF/CDIC-compressed")


def _palm_database(kind: bytes, text: bytes) -> bytes:
    """A Palm database of ``kind``: a PalmDOC header record (no compression) and 4096-byte text
    records."""
    chunks = [text[i: i + 4096] for i in range(0, len(text), 4096)]
    header = struct.pack(">HHIHHHH", 1, 0, len(text), len(chunks), 4096, 0, 0)
    records = [header, *chunks]
    offset = 78 + 8 * len(records) + 2
    table = b""
    for i, record in enumerate(records):
        table += struct.pack(">II", offset, i)
        offset += len(record)
    name = b"old".ljust(32, b"\0")
    head = name + bytes(28) + kind + bytes(8) + struct.pack(">H", len(records))
    return head + table + b"\0\0" + b"".join(records)


def make_fixtures() -> None:
    """Write the EPUB and convert it with calibre into tests/data/mobi."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        epub = write_book(Path(folder) / "book.epub")
        subprocess.run(["ebook-convert", str(epub), str(FIXTURES / "book.mobi"), "--mobi-file-type", "old"], check=True)
        subprocess.run(["ebook-convert", str(epub), str(FIXTURES / "book.azw3")], check=True)


if __name__ == "__main__":
    make_fixtures()
