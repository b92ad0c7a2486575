"""Hostile and damaged documents: each refused in one line (DocumentLoadError, a BadInput), fast,
with nothing half-built and the previous knowledge base intact."""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path

import pytest

from configs.errors import BadInput
from kb import KnowledgeBase
from kb.errors import DocumentLoadError
from kb.loaders import open_document
from tests.fixtures.documents import SourceChapter, write_docx, write_epub, write_pdf

CHAPTERS = [
    SourceChapter("第一回 宴桃园豪杰三结义", ["话说天下大势，分久必合，合久必分。", "玄德见了榜文，慨然长叹。"]),
    SourceChapter("第二回 张翼德怒鞭督邮", ["且说董卓字仲颖，陇西临洮人也。"]),
]
LAUGHS = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">'
    '<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">'
    '<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">'
    '<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">'
    '<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">'
    '<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">'
    '<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>'
)


def refused(path: Path, match: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with pytest.raises(DocumentLoadError, match=match) as info:
        open_document(path, **kwargs)
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, BadInput)
    return message


def test_encrypted_pdf_says_decrypt_it_first(tmp_path: Path) -> None:
    write_pdf(tmp_path / "secret.pdf", CHAPTERS, encrypt="s3cret")
    refused(tmp_path / "secret.pdf", "password-protected; decrypt it first")


def test_scanned_pdf_with_ocr_off_says_run_with_ocr_auto(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (400, 600), "white").save(tmp_path / "scan.pdf", "PDF")
    refused(tmp_path / "scan.pdf", "scanned pages .*--ocr auto", ocr="off")


def test_image_with_ocr_off_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40), "white").save(tmp_path / "photo.txt", "PNG")  # a PNG named .txt
    refused(tmp_path / "photo.txt", "is an image and OCR is off", ocr="off")


def test_corrupt_pdf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage" * 10)
    refused(tmp_path / "broken.pdf", "damaged PDF")
    good = tmp_path / "good.pdf"
    write_pdf(good, CHAPTERS)
    (tmp_path / "cut.pdf").write_bytes(good.read_bytes()[:400])
    refused(tmp_path / "cut.pdf", "damaged PDF|no text")


def zip_bomb(path: Path, member: str, *, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
        archive.writestr(member, b"\x00" * (8 << 20))  # 8 MiB of zeros deflate ~1000:1
    return path


def test_docx_and_epub_zip_bombs_are_refused_before_unpacking(tmp_path: Path) -> None:
    refused(zip_bomb(tmp_path / "bomb.docx", "word/document.xml"), "zip bomb")
    refused(zip_bomb(tmp_path / "bomb.epub", "OEBPS/big.xhtml", extra={"META-INF/container.xml": "<container/>"}), "zip bomb")


def test_archive_over_the_total_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kb.loaders.sniff as sniff

    path = write_docx(tmp_path / "big.docx", CHAPTERS)
    monkeypatch.setattr(sniff, "MAX_UNPACKED_BYTES", 1000)
    refused(path, "would unpack to .* possible zip bomb")


def test_xml_entities_are_never_expanded(tmp_path: Path) -> None:
    """Billion laughs in an EPUB's package file and chapter, and in a DOCX body: no expansion."""
    path = write_epub(tmp_path / "laughs.epub", CHAPTERS)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    opf = files["OEBPS/content.opf"].decode()
    files["OEBPS/content.opf"] = opf.replace("?>", "?>" + LAUGHS, 1).replace("三国演义</dc:title>", "&lol9;</dc:title>").encode()
    chapter = files["OEBPS/text/chap1.xhtml"].decode()
    files["OEBPS/text/chap1.xhtml"] = chapter.replace("<!DOCTYPE html>", LAUGHS).replace("话说", "&lol9;话说").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    started = time.perf_counter()
    try:
        text = "".join(open_document(path).blocks())
    except DocumentLoadError as e:
        assert "\n" not in str(e)
    else:
        assert "lollol" not in text and "话说天下大势" in text
    assert time.perf_counter() - started < 5

    docx_path = write_docx(tmp_path / "laughs.docx", CHAPTERS)
    with zipfile.ZipFile(docx_path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    body = files["word/document.xml"].decode()
    files["word/document.xml"] = body.replace("?>", "?>" + LAUGHS, 1).replace("话说", "&lol9;话说").encode()
    with zipfile.ZipFile(docx_path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    try:
        text = "".join(open_document(docx_path).blocks())
    except DocumentLoadError as e:
        assert "\n" not in str(e)
    else:
        assert "lollol" not in text


def test_deeply_nested_html_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.html"
    path.write_text("<html><body>" + "<div>" * 100_000 + "深" + "</div>" * 100_000 + "</body></html>", encoding="utf-8")
    refused(path, "nested more than")


def test_almost_right_utf8_is_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a UTF-8 file cut inside its last character was refused as "not UTF-8 ...
    GB18030 or Big5"; it is read, and the warning says how many bytes were replaced and where."""
    text = "滚滚长江东逝水，浪花淘尽英雄。是非成败转头空。" * 20
    data = text.encode("utf-8")
    (tmp_path / "cut.txt").write_bytes(data[:-1])
    (tmp_path / "bad.txt").write_bytes(data[:30] + b"\xff\xfe" + data[30:])
    with caplog.at_level(logging.WARNING):
        cut = open_document(tmp_path / "cut.txt")
        bad = open_document(tmp_path / "bad.txt")
    assert "".join(cut.blocks()) == text[:-1] + "\ufffd"
    assert "".join(bad.blocks()) == text[:10] + "\ufffd\ufffd" + text[10:]
    assert f"2 bad bytes replaced with U+FFFD (at byte offset {len(data) - 3})" in caplog.text
    assert "2 bad bytes replaced with U+FFFD (at byte offsets 30, 31)" in caplog.text
    # A legacy-encoded file is still read as such, and binary stays refused.
    (tmp_path / "gbk.txt").write_bytes(text.encode("gbk"))
    assert open_document(tmp_path / "gbk.txt").encoding == "gb18030"
    (tmp_path / "noise.txt").write_bytes(bytes(range(256)) * 50)
    refused(tmp_path / "noise.txt", "binary|cannot decode")


def test_a_bad_file_leaves_the_knowledge_base_as_it_was(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("第一回 开始\n话说天下大势，分久必合，合久必分。\n", encoding="utf-8")
    kb = KnowledgeBase(tmp_path, "intact", create=True, embedding_model="none")
    kb.add_files([good])
    before = kb.version
    other = write_docx(tmp_path / "other.docx", CHAPTERS)
    write_pdf(tmp_path / "secret.pdf", CHAPTERS, encrypt="pw")
    with pytest.raises(DocumentLoadError, match="password-protected"):
        kb.add_files([other, tmp_path / "secret.pdf"])
    assert kb.version == before
    assert [d.source for d in kb.list_documents()] == [str(good.resolve())]
    kb.close()


def test_damaged_docx_and_epub_are_refused(tmp_path: Path) -> None:
    docx_path = write_docx(tmp_path / "broken.docx", CHAPTERS)
    with zipfile.ZipFile(docx_path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files["word/document.xml"] = files["word/document.xml"][:200]  # cut inside the XML
    with zipfile.ZipFile(docx_path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    refused(docx_path, "damaged Word document")
    epub_path = tmp_path / "broken.epub"
    with zipfile.ZipFile(epub_path, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr("META-INF/container.xml", '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                         '<rootfiles><rootfile full-path="OEBPS/missing.opf"/></rootfiles></container>')
    refused(epub_path, "damaged: it names OEBPS/missing.opf")


def _garbled_deflate(path: Path, member: str) -> Path:
    """``member``'s compressed bytes overwritten (its headers kept): zipfile raises zlib.error."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data = bytearray(path.read_bytes())
    name_length, extra_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start : start + info.compress_size] = b"\xff" * info.compress_size
    path.write_bytes(bytes(data))
    return path


def _bad_utf8_name(path: Path) -> Path:
    """A member name flagged UTF-8 whose bytes are not (zipfile raises UnicodeDecodeError at open)."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("é.txt", "x")
    path.write_bytes(path.read_bytes().replace("é.txt".encode(), b"\xff\xfe.txt"))
    return path


def test_zip_packages_with_corrupt_data_or_names_are_one_line(tmp_path: Path) -> None:
    """Bug: corrupt deflate data (zlib.error, which zipfile does not wrap) and a name flagged
    UTF-8 that is not (UnicodeDecodeError) escaped as tracebacks from the ODT/EPUB loaders and
    format detection; random corruption of ODT/ODS/ODP/EPUB/archives found them."""
    from kb.loaders.archives import unpack_documents

    odt = tmp_path / "a.odt"
    odt.write_bytes((Path(__file__).parent / "data" / "odf" / "chapters.odt").read_bytes())
    refused(_garbled_deflate(odt, "content.xml"), "damaged")
    odt.write_bytes((Path(__file__).parent / "data" / "odf" / "chapters.odt").read_bytes())
    refused(_bad_utf8_name(odt), "damaged ZIP archive")
    epub = write_epub(tmp_path / "b.epub", CHAPTERS)
    refused(_garbled_deflate(epub, "OEBPS/text/chap1.xhtml"), "damaged")
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("a.txt", "第一章 甲\n" * 100)
    (tmp_path / "into").mkdir()
    with pytest.raises(DocumentLoadError, match="damaged"):
        unpack_documents(_garbled_deflate(archive, "a.txt"), tmp_path / "into")
    with pytest.raises(DocumentLoadError, match="damaged ZIP archive"):
        unpack_documents(_bad_utf8_name(archive), tmp_path / "into")
