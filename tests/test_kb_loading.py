"""kb.loading: every encoding Chinese novels come in is decoded; binary/empty/missing refused."""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path

import pytest

from kb import DocumentLoadError, decode_bytes, load_text

# Traditional-character paragraphs (三国演义 / 西游记 openings) for Big5, which cannot encode simplified text.
TRADITIONAL = [
    "話說天下大勢，分久必合，合久必分。周末七國分爭，并入於秦。及秦滅之後，楚、漢分爭，又并入於漢。"
    "漢朝自高祖斬白蛇而起義，一統天下，後來光武中興，傳至獻帝，遂分為三國。",
    "玄德幼孤，事母至孝；家貧，販屨織蓆為業。家住本縣樓桑村。其家之東南，有一大桑樹，高五丈餘，"
    "遙望之，童童如車蓋。相者云：「此家必出貴人。」",
    "蓋聞天地之數，有十二萬九千六百歲為一元。將一元分為十二會，乃子、丑、寅、卯、辰、巳、午、未、申、酉、戌、亥之十二支也。",
    "相者云：「此家必出貴人。」",
]


def corpus_paragraphs(path: Path) -> list[str]:
    """Realistic paragraphs of several lengths (a short line, a sentence, a paragraph, a chapter head)."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if len(line) > 30]
    return [lines[10][:24], lines[50][:80], lines[200], text[:3000]]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_simplified_corpus_text_round_trips(encoding: str, sanguo_path: Path, xiyouji_path: Path) -> None:
    for text in corpus_paragraphs(sanguo_path) + corpus_paragraphs(xiyouji_path):
        data = encode(text, encoding)
        decoded, detected = decode_bytes(data)
        assert decoded == text, f"{encoding} -> {detected}"


@pytest.mark.parametrize("encoding", ["big5", "utf-8", "utf-16", "gb18030"])
def test_traditional_text_round_trips(encoding: str) -> None:
    """Big5 vs GBK on short texts is the hard case: both decoders accept most byte pairs."""
    for text in TRADITIONAL:
        decoded, detected = decode_bytes(text.encode(encoding))
        assert decoded == text, f"{encoding} detected as {detected}"


def test_gbk_novel_file_is_decoded(tmp_path: Path, xiyouji_path: Path) -> None:
    """西游记 circulates as GBK: the whole novel must come back identical."""
    text = xiyouji_path.read_text(encoding="utf-8")
    path = tmp_path / "xiyouji_gbk.txt"
    path.write_bytes(text.encode("gb18030"))
    assert load_text(path) == text


def test_bom_is_removed_and_newlines_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_bytes(codecs.BOM_UTF8 + "# 标题\r\n正文。\r\n".encode())
    assert load_text(path) == "# 标题\r\n正文。\r\n"


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (zip_bytes(), "ZIP"),
        (bytes(range(256)) * 4, "binary"),
        (b"\x7fELF\x02\x01\x01\x00", "executable"),
    ],
)
def test_binary_input_is_refused(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    with pytest.raises(DocumentLoadError, match=expected) as info:
        load_text(path)
    assert "UTF-8" in str(info.value)  # says how to fix it


def test_undecodable_text_is_refused() -> None:
    with pytest.raises(DocumentLoadError, match="cannot decode"):
        decode_bytes("Ça coûte très cher, répétez-le à Noël".encode("latin-1"), name="x.txt")


def test_broken_bom_file_is_refused() -> None:
    with pytest.raises(DocumentLoadError, match="byte-order mark"):
        decode_bytes(codecs.BOM_UTF8 + b"\xff\xfe\xfa", name="x.txt")


@pytest.mark.parametrize("data", [b"", b"   \n\t\n", codecs.BOM_UTF8, codecs.BOM_UTF16_LE + " \n".encode("utf-16-le")])
def test_empty_input_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(data)
    with pytest.raises(DocumentLoadError, match="empty"):
        load_text(path)


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentLoadError, match="not found"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(DocumentLoadError, match="folder"):
        load_text(tmp_path)


def test_many_short_gbk_windows_of_the_novel(sanguo_path: Path) -> None:
    """Short GBK snippets (20-200 chars) must not be mistaken for Big5."""
    import random

    text = sanguo_path.read_text(encoding="utf-8")
    rng = random.Random(7)
    for _ in range(60):
        start = rng.randrange(len(text) - 300)
        snippet = text[start : start + rng.randrange(20, 200)]
        if not snippet.strip():
            continue
        assert decode_bytes(snippet.encode("gbk"))[0] == snippet
