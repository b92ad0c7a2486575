"""Word 97-2003 (.doc): the main text of real .doc files against the DOCX they were made from, the
piece table's two encodings, fields and marks, and refusals. The .doc files in tests/data/doc were
written by LibreOffice 7.4 (``soffice --headless --convert-to doc``) from the DOCX that
``write_manual`` / ``write_english`` make here; ``python -m tests.test_loaders_doc`` remakes them
(needs LibreOffice, which CI does not install)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest

from app.errors import UserError
from kb.loaders import SUFFIX_FORMATS, SUPPORTED_SUFFIXES, detect_format, open_document
from kb.loaders.doc import main_text, readable
from tests.helpers import ingest_hits, libreoffice_convert
from tests.test_loaders_hostile import refused

FIXTURES = Path(__file__).parent / "data" / "doc"
MANUAL = ["员工手册", "第一章 总则", "为规范公司管理，制定本手册。本手册适用于全体员工。", "第二章 休假制度",
          "年假每年五天，病假需要医院证明。详见人事网站。", "姓名", "部门", "张三", "销售部",
          "第三章 附则 Appendix: contact hr@example.com"]
ENGLISH = ["Employee Handbook", "Chapter 1. Leave: five days a year; café rules apply."]
RULES = [("总则", 1), ("本制度适用于全体员工。", 0), ("请假", 1), ("病假需医院证明。", 0), ("年假", 2),
         ("满一年五天。", 0), ("Travel 出差", 1), ("凭发票报销。", 0)]


def write_manual(path: Path) -> Path:
    """A Chinese manual: a title, 第N章 lines, a hyperlink (a field in .doc), a table, a page break
    and a header (not main text)."""
    import docx
    from docx.opc.constants import RELATIONSHIP_TYPE
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    document = docx.Document()
    document.add_heading(MANUAL[0], 0)
    for line in MANUAL[1:4]:
        document.add_paragraph(line)
    paragraph = document.add_paragraph("年假每年五天，病假需要医院证明。详见")
    link = OxmlElement("w:hyperlink")
    link.set(qn("r:id"), document.part.relate_to("http://hr.example.com/", RELATIONSHIP_TYPE.HYPERLINK,
                                                  is_external=True))
    run = OxmlElement("w:r")
    text = OxmlElement("w:t")
    text.text = "人事网站"
    run.append(text)
    link.append(run)
    paragraph._p.append(link)
    paragraph.add_run("。")
    table = document.add_table(rows=2, cols=2)
    for cell, value in zip((c for row in table.rows for c in row.cells), MANUAL[5:9], strict=True):
        cell.text = value
    document.add_page_break()
    document.add_paragraph(MANUAL[9])
    document.sections[0].header.paragraphs[0].text = "页眉：内部资料"
    document.save(path)
    return path


def write_english(path: Path) -> Path:
    import docx

    document = docx.Document()
    for line in ENGLISH:
        document.add_paragraph(line)
    document.save(path)
    return path


def write_rules(path: Path) -> Path:
    """Rules whose sections are Word's "Heading 1" / "Heading 2" paragraphs (no 第N章 lines)."""
    import docx

    document = docx.Document()
    for line, level in RULES:
        document.add_heading(line, level) if level else document.add_paragraph(line)
    document.save(path)
    return path


OUTLINE = [("差旅制度", 0), ("总则", 1), ("本制度适用于全体员工。", 0), ("交通", 2),
           ("火车二等座，飞机经济舱。", 0), ("报销", 1), ("凭发票报销。", 0), ("不是标题", 0), ("附言。", 0)]


def write_outline(path: Path) -> Path:
    """Headings as Word and WPS also make them: a custom style based on Heading 1 ("总则"), a style with
    its own outline level 2 ("交通"), a body paragraph given outline level 1 ("报销"), and a paragraph of
    the custom heading style set back to body text ("不是标题"); before them a table of contents (a TOC
    field whose entries are in the "toc 1" style), which repeats the headings and is left out."""
    import docx
    from docx.enum.style import WD_STYLE_TYPE

    document = docx.Document()
    styles = document.styles
    styles.add_style("公司一级标题", WD_STYLE_TYPE.PARAGRAPH).base_style = styles["Heading 1"]
    point = styles.add_style("要点标题", WD_STYLE_TYPE.PARAGRAPH)
    point.base_style = styles["Normal"]
    _set_outline(point.element, 1)
    styles.add_style("toc 1", WD_STYLE_TYPE.PARAGRAPH)
    document.add_paragraph(OUTLINE[0][0])
    first = document.add_paragraph(style="toc 1")
    _add_field_marks(first, "begin", ' TOC \\o "1-3" \\h \\z \\u ', "separate")
    first.add_run("总则\t1")
    _add_field_marks(document.add_paragraph("报销\t2", style="toc 1"), "end")
    style_of = {"总则": "公司一级标题", "交通": "要点标题", "不是标题": "公司一级标题"}
    for line, _ in OUTLINE[1:]:
        paragraph = document.add_paragraph(line, style=style_of.get(line))
        if line in ("报销", "不是标题"):
            _set_outline(paragraph._p, 0 if line == "报销" else 9)
    document.save(path)
    return path


def _set_outline(element: Any, level: int) -> None:
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    outline = OxmlElement("w:outlineLvl")
    outline.set(qn("w:val"), str(level))
    element.get_or_add_pPr().append(outline)


def _add_field_marks(paragraph: Any, *parts: str) -> None:
    """Runs of a complex field: "begin", "separate", "end" marks, anything else its code."""
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    for part in parts:
        run = OxmlElement("w:r")
        if part in ("begin", "separate", "end"):
            mark = OxmlElement("w:fldChar")
            mark.set(qn("w:fldCharType"), part)
        else:
            mark = OxmlElement("w:instrText")
            mark.set(qn("xml:space"), "preserve")
            mark.text = part
        run.append(mark)
        paragraph._p.append(run)


@pytest.mark.parametrize("write", [write_manual, write_english, write_rules, write_outline])
def test_doc_main_text_is_the_docx_loaders_text(write: Any, tmp_path: Path) -> None:
    """Differential: the .doc LibreOffice made from a DOCX reads as the DOCX loader reads that DOCX,
    the table as ``a | b`` rows and the headings ("Heading 1-3" styles; a .doc's were plain lines
    before) included."""
    name = write.__name__.removeprefix("write_") + ".doc"
    document = open_document(FIXTURES / name)
    assert (document.format, detect_format(FIXTURES / name)) == ("doc", "doc")
    text = "".join(document.blocks())
    source_document = open_document(write(tmp_path / "source.docx"))
    source = "".join(source_document.blocks())
    assert _lines(text) == _lines(source)
    assert [(h.level, h.title, text[h.start:h.start + len(h.title)]) for h in document.headings] == [
        (h.level, h.title, source[h.start:h.start + len(h.title)]) for h in source_document.headings]
    if name in ("rules.doc", "outline.doc"):
        lines = RULES if name == "rules.doc" else OUTLINE
        assert [(h.title, h.level) for h in document.headings] == [(t, n) for t, n in lines if n]
        assert "\t" not in text  # no table of contents entry ("总则\t1")
    assert "HYPERLINK" not in text and "页眉" not in text  # a field's code, a header: not main text
    if name == "manual.doc":
        assert "姓名 | 部门\n张三 | 销售部\n" in text


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_chapters_and_citations_of_a_doc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hits = ingest_hits([FIXTURES / "manual.doc"], "年假 病假", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "年假" in h["text"])
    assert hit["chapter"] == 2 and "休假制度" in (hit["chapter_title"] or "")
    hits = ingest_hits([FIXTURES / "rules.doc"], "病假 证明", root=tmp_path / "kbs2", capsys=capsys)
    hit = next(h for h in hits if "病假" in h["text"])  # a section of a heading style, not a 第N章 line
    assert hit["chapter"] == 2 and hit["chapter_title"] == "请假"


def test_the_piece_table_in_both_encodings_and_words_marks() -> None:
    """Two pieces as Word's fast save leaves them: one byte per character (Windows-1252, offset
    fc / 2) and UTF-16; the main text stops at ccpText; fields keep their results."""
    first = "Caf\xe9 \x13 PAGE \x142\x15\r"
    second = "第一章\x07总则\x07\x07\x0c结束\r页眉"
    fc_clx, clx_cps = 0, (0, len(first), len(first) + len(second))
    word = bytearray(0x200)
    compressed_at, unicode_at = len(word), len(word) + len(first)
    word += first.encode("cp1252") + second.encode("utf-16-le")
    struct.pack_into("<i", word, 0x4C, len(first) + len(second) - 2)  # ccpText: not the header's 页眉
    pcds = struct.pack("<HIH", 0, (compressed_at * 2) | 0x40000000, 0) + struct.pack("<HIH", 0, unicode_at, 0)
    plc = struct.pack("<3i", *clx_cps) + pcds
    table = bytes([0x01]) + struct.pack("<H", 3) + b"\x00\x00\x00" + bytes([0x02]) + struct.pack("<I", len(plc)) + plc
    struct.pack_into("<II", word, 0x1A2, fc_clx, len(table))
    raw = main_text(bytes(word), table)
    assert raw == (first + second)[:-2]
    assert readable(raw) == "Café 2\n第一章\n总则\n\n\n结束\n"  # no paragraph properties: a cell per line


def test_table_rows_from_the_paragraph_properties() -> None:
    """Regression: a .doc's table cells came out one per line, and an empty cell (two end marks in a
    row) looked like a row end. The paragraph FKP says which marks are in a table and which one
    ends a row (sprmPFInTable, sprmPFTtp; here after a sprmTDefTable and a 2-byte sprm, which the
    reader must step over by their sizes): a row with a two-paragraph cell and an empty cell."""
    paragraphs = ["前言\r", "甲\r", "乙\x07", "\x07", "丙\x07", "\x07", "后记\r"]
    in_table = struct.pack("<HB", 0x2416, 1)
    row_end = struct.pack("<HH", 0xD608, 3) + b"\x01\x00" + struct.pack("<HH", 0x4600, 7) + in_table + \
        struct.pack("<HB", 0x2417, 1)
    papx = [None, in_table, in_table, in_table, in_table, row_end, None]
    text = "".join(paragraphs)
    word = bytearray(0x200)
    text_at = len(word)
    word += text.encode("utf-16-le")
    word += bytes(-len(word) % 512)
    bounds = [text_at]
    for paragraph in paragraphs:
        bounds.append(bounds[-1] + 2 * len(paragraph))
    page_number = len(word) // 512
    word += _papx_fkp(bounds, papx)
    struct.pack_into("<i", word, 0x4C, len(text))
    plc = struct.pack("<2i", 0, len(text)) + struct.pack("<HIH", 0, text_at, 0)
    clx = bytes([0x02]) + struct.pack("<I", len(plc)) + plc
    bte = struct.pack("<2II", bounds[0], bounds[-1], page_number)
    table = clx + bte
    struct.pack_into("<II", word, 0x1A2, 0, len(clx))
    struct.pack_into("<II", word, 0x102, len(clx), len(bte))
    assert readable(main_text(bytes(word), table)) == "前言\n甲 乙 |  | 丙\n后记\n"


def _papx_fkp(bounds: list[int], papx: list[bytes | None]) -> bytes:
    """A PapxFkp page: the paragraphs' byte bounds, a BxPap each (0: default properties), and each
    PapxInFkp (``cb`` words of style index and sprms, or ``0, cb'`` for an even length) from the end."""
    page = bytearray(512)
    page[-1] = len(papx)
    struct.pack_into(f"<{len(bounds)}I", page, 0, *bounds)
    end = 511
    for i, sprms in enumerate(papx):
        if sprms is None:
            continue
        body = b"\x00\x00" + sprms  # style index 0, then the sprms
        record = bytes([(len(body) + 1) // 2]) + body if len(body) % 2 else bytes([0, len(body) // 2]) + body
        start = (end - len(record)) & ~1
        page[start: start + len(record)] = record
        page[4 * len(bounds) + 13 * i] = start // 2
        end = start
    return bytes(page)


def test_based_on_chains_that_loop_end() -> None:
    """A hostile style sheet whose styles are based on each other in a ring gives no heading (and does
    not hang); a chain reaching a heading style or an outline level gives its level."""
    from kb.loaders.doc_styles import Style, _resolved_level

    ring = {1: Style(None, None, 2, False), 2: Style(None, None, 1, False)}
    assert _resolved_level(ring, 1) == 0
    chain = {0: Style(None, None, 0x0FFF, False), 5: Style(2, 0, 0, False), 6: Style(None, None, 5, False),
             7: Style(None, 9, 5, False), 8: Style(None, 2, 0, False)}
    assert [_resolved_level(chain, i) for i in (0, 5, 6, 7, 8, 9)] == [0, 2, 2, 0, 3, 0]


def test_doc_refusals(tmp_path: Path) -> None:
    data = (FIXTURES / "english.doc").read_bytes()
    assert ".doc" in SUPPORTED_SUFFIXES and SUFFIX_FORMATS[".doc"] == frozenset({"doc"})
    (tmp_path / "cut.doc").write_bytes(data[: len(data) // 3])
    refused(tmp_path / "cut.doc", "(damaged Word document|Office 97-2003 file)")
    name = "1Table".encode("utf-16-le")
    assert name in data
    (tmp_path / "tableless.doc").write_bytes(data.replace(name, "2Table".encode("utf-16-le")))
    refused(tmp_path / "tableless.doc", "damaged Word document \\(no 1Table stream\\)")
    (tmp_path / "locked.doc").write_bytes(_with_fib_flag(data, 0x0100))
    refused(tmp_path / "locked.doc", "password-protected")
    at = data.find(b"\xec\xa5", 512)
    (tmp_path / "word95.doc").write_bytes(data[: at + 2] + struct.pack("<H", 104) + data[at + 4:])
    refused(tmp_path / "word95.doc", "Word 6.0/95 document; open it in Word or WPS and save it as .docx")



def test_wps_office_names_are_read_by_their_content(tmp_path: Path) -> None:
    """WPS Office, the office suite most Chinese users have, saves .wps/.et/.dps: Word, Excel and
    PowerPoint files inside. They pass the upload check by name and read as what they hold; a
    .wps that holds a spreadsheet is refused at upload as contradicting its name."""
    from app.web.manage import check_content
    from tests.test_loaders_ppt import FIXTURE as PPT
    from tests.test_loaders_xls import write_xls

    files = {"manual.wps": (FIXTURES / "manual.doc").read_bytes(), "deck.dps": PPT.read_bytes()}
    files["book.et"] = write_xls(tmp_path / "book.xls").read_bytes()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert check_content(tmp_path / name) == tmp_path / name
        assert open_document(tmp_path / name).format == {"wps": "doc", "dps": "ppt", "et": "xls"}[name.split(".")[1]]
    (tmp_path / "sheet.wps").write_bytes(files["book.et"])
    with pytest.raises(UserError, match=r"sheet.wps is xls, not what its name says \(.wps\)"):
        check_content(tmp_path / "sheet.wps")


def _with_fib_flag(data: bytes, flag: int) -> bytes:
    """``data`` (a .doc) with ``flag`` set in the FIB's flags: the WordDocument stream starts at a
    sector whose first bytes are the FIB's identifier 0xA5EC."""
    at = data.find(b"\xec\xa5", 512)
    flags = struct.unpack_from("<H", data, at + 0x0A)[0] | flag
    return data[: at + 0x0A] + struct.pack("<H", flags) + data[at + 0x0C:]


def make_fixtures() -> None:
    """Write the DOCX sources and convert them with LibreOffice into tests/data/doc."""
    with tempfile.TemporaryDirectory() as folder:
        sources = [write(Path(folder) / f"{write.__name__.removeprefix('write_')}.docx")
                   for write in (write_manual, write_english, write_rules, write_outline)]
        libreoffice_convert(sources, "doc", FIXTURES)


if __name__ == "__main__":
    make_fixtures()
