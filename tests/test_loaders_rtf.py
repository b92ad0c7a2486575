"""RTF (WordPad, "save as RTF" in Word and WPS): the text without control words, in the code page
the document declares or its Chinese fonts imply; recognised by content; chapters from 第N回 lines.
The documents are written here as RTF source, with Chinese content."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb.loaders import SUFFIX_FORMATS, SUPPORTED_SUFFIXES, detect_format, open_document
from kb.loaders.rtf import rtf_codec
from tests.helpers import ingest_hits
from tests.test_loaders_hostile import refused

CHAPTERS = "第一回　宴桃园豪杰三结义\n话说天下大势，分久必合，合久必分。\n第二回　张翼德怒鞭督邮\n且说董卓字仲颖。\n"
TRADITIONAL = "第一回　宴桃園豪傑三結義\n話說天下大勢，分久必合，合久必分。\n第二回　張翼德怒鞭督郵\n且說董卓字仲穎。\n"


def escaped(text: str, codec: str) -> str:
    """``text`` as RTF: ``\\'hh`` escapes of its bytes in ``codec``, ``\\par`` for line ends."""
    out = []
    for line in text.split("\n"):
        out.append("".join(ch if ord(ch) < 128 else "".join(f"\\'{b:02x}" for b in ch.encode(codec)) for ch in line))
    return "\\par\n".join(out)


def unicode_escaped(text: str) -> str:
    """``text`` as Word writes it: ``\\uN?`` with one fallback character (``\\uc1``)."""
    return "\\par\n".join("".join(ch if ord(ch) < 128 else f"\\u{ord(ch) if ord(ch) < 32768 else ord(ch) - 65536}?"
                                  for ch in line) for line in text.split("\n"))


def rtf(body: str, *, header: str = "\\ansi\\ansicpg936", fonts: str = "{\\f0\\fnil\\fcharset134 SimSun;}") -> str:
    """A document as WordPad writes one: font and colour tables, a generator, a picture, the body."""
    return (f"{{\\rtf1{header}\\deff0{{\\fonttbl{fonts}}}{{\\colortbl ;\\red255\\green0\\blue0;}}"
            f"{{\\*\\generator Riched20 10.0.19041}}\\viewkind4\\uc1\\pard\\f0\\fs24 "
            f"{{\\pict\\pngblip\\picw10\\pich10 89504e470d0a1a0a0000000d49484452}}{body}\\par\n}}")


@pytest.mark.parametrize(
    ("name", "source", "codec", "expected"),
    [
        ("gbk.rtf", rtf(escaped(CHAPTERS, "gbk")), "gbk", CHAPTERS),  # WordPad on Chinese Windows: \ansicpg936
        # English Word: declares 1252, writes Chinese in a GB2312 font (SimSun) as GBK bytes
        ("english-word.rtf", rtf("Preface\\par\\f1 " + escaped(CHAPTERS, "gbk"), header="\\ansi\\ansicpg1252",
                                 fonts="{\\f0\\fswiss\\fcharset0 Arial;}{\\f1\\fnil\\fcharset134 SimSun;}"),
         "cp1252", "Preface\n" + CHAPTERS),
        ("big5.rtf", rtf(escaped(TRADITIONAL, "big5"), header="\\ansi", fonts="{\\f0\\fnil\\fcharset136 MingLiU;}"),
         "cp950", TRADITIONAL),
        ("unicode.rtf", rtf(unicode_escaped(CHAPTERS), header="\\ansi\\ansicpg1252",
                            fonts="{\\f0\\fswiss\\fcharset0 Arial;}"), "cp1252", CHAPTERS),
    ],
)
def test_rtf_text_in_its_code_page(tmp_path: Path, name: str, source: str, codec: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(source, encoding="ascii")
    document = open_document(path)
    assert (document.format, document.encoding) == ("rtf", codec)
    text = "".join(document.blocks())
    assert text.split() == expected.split()  # no control words, font names or picture bytes
    assert not document.warnings


def test_rtf_is_recognised_by_content_and_accepted_for_upload(tmp_path: Path) -> None:
    """Regression: an RTF file was read as plain text, its control words becoming the passages
    (``{\\rtf1\\ansi\\ansicpg936\\deff0{\\fonttbl...``)."""
    from app.web.manage import check_content

    source = rtf(escaped(CHAPTERS, "gbk"))
    (tmp_path / "saved.txt").write_text(source, encoding="ascii")  # renamed: the bytes decide
    assert detect_format(tmp_path / "saved.txt") == "rtf"
    assert "宴桃园" in "".join(open_document(tmp_path / "saved.txt").blocks())
    assert ".rtf" in SUPPORTED_SUFFIXES and SUFFIX_FORMATS[".rtf"] == frozenset({"rtf"})
    (tmp_path / "memo.rtf").write_text(source, encoding="ascii")
    assert check_content(tmp_path / "memo.rtf") == tmp_path / "memo.rtf"


def test_rtf_codec_from_the_header() -> None:
    assert rtf_codec(b"{\\rtf1\\ansi\\ansicpg950\\deff0") == "cp950"
    assert rtf_codec(b"{\\rtf1\\ansi\\ansicpg65001") == "utf-8"
    assert rtf_codec(b"{\\rtf1\\ansi{\\fonttbl{\\f0\\fcharset0 Arial;}{\\f1\\fcharset128 MS Mincho;}}") == "cp932"
    assert rtf_codec(b"{\\rtf1\\mac\\ansicpg10000") == "cp1252"  # no Python codec: RTF's default
    assert rtf_codec(b"{\\rtf1\\ansi\\deff0") == "cp1252"


def test_empty_and_unencodable_rtf(tmp_path: Path) -> None:
    (tmp_path / "empty.rtf").write_text(rtf("   "), encoding="ascii")
    refused(tmp_path / "empty.rtf", "has no text; there is nothing to add")
    (tmp_path / "odd.rtf").write_text(rtf("\\'81\\'20ok"), encoding="ascii")  # half a GBK character
    document = open_document(tmp_path / "odd.rtf")
    assert "ok" in "".join(document.blocks())
    assert document.warnings and "replaced with U+FFFD" in document.warnings[0]


def test_ingest_build_of_an_rtf_novel_cites_its_chapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "novel.rtf").write_text(rtf(escaped(CHAPTERS, "gbk")), encoding="ascii")
    hits = ingest_hits([tmp_path / "novel.rtf"], "董卓 仲颖", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "董卓" in h["text"])
    assert hit["chapter"] == 2 and "{" not in hit["text"] and "\\" not in hit["text"]


def test_rtf_table_rows_read_like_other_formats_tables(tmp_path: Path) -> None:
    """A table in RTF (Word's and LibreOffice's "save as RTF") read as ``假别|天数|`` (striprtf's cell
    marks) while DOCX, ODT and HTML rows read ``假别 | 天数``: one row form for every format now."""
    def row(*cells: str) -> str:
        return "\\trowd\\cellx2000\\cellx4000\\pard\\intbl " + "".join(f"{escaped(c, 'gbk')}\\cell " for c in cells) + \
            "\\row\n"

    body = escaped("请假制度", "gbk") + "\\par\n" + row("假别", "天数") + row("年 假", "五天") + "\\pard " + \
        escaped("出差凭发票报销。", "gbk")
    path = tmp_path / "manual.rtf"
    path.write_text(rtf(body), encoding="ascii")
    lines = [line for line in "".join(open_document(path).blocks()).splitlines() if line.strip()]
    assert lines == ["请假制度", "假别 | 天数", "年 假 | 五天", "出差凭发票报销。"]
