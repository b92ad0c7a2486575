"""PowerPoint, Excel and CSV/TSV: slides are pages with their titles as headings and their notes
after the body, sheets are headings, table rows are lines that name their columns, and damaged or
hostile files are refused in one line. The documents are written here, with Chinese content."""

from __future__ import annotations

import datetime
import json
import zipfile
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.citation import source_label
from kb.loaders import SUFFIX_FORMATS, SUPPORTED_SUFFIXES, detect_format, open_document
from tests.test_loaders_formats import squeeze
from tests.test_loaders_hostile import LAUGHS, refused, zip_bomb


def write_pptx(path: Path) -> Path:
    """Five slides: a title slide; a chapter with notes; shapes placed out of reading order, a
    table with a merged cell and a group; a slide without text; a last titled slide."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    cover = deck.slides.add_slide(deck.slide_layouts[0])
    cover.shapes.title.text = "员工手册"
    cover.placeholders[1].text = "人力资源部 2024"
    chapter = deck.slides.add_slide(deck.slide_layouts[1])
    chapter.shapes.title.text = "第一章 休假制度"
    chapter.placeholders[1].text_frame.text = "年假每年五天\n病假需要医院证明"
    chapter.notes_slide.notes_text_frame.text = "年假可以累积到次年三月。\n讲到这里停一下。"
    grid = deck.slides.add_slide(deck.slide_layouts[5])
    grid.shapes.title.text = "部门一览"

    def box(slide, left: float, top: float, text: str) -> None:  # type: ignore[no-untyped-def]
        slide.shapes.add_textbox(Inches(left), Inches(top), Inches(2), Inches(0.5)).text_frame.text = text

    box(grid, 5, 1.5, "右上：联系人")
    box(grid, 1, 1.5, "左上：组织架构\v第二行")
    box(grid, 1, 6, "左下：更新于三月")
    table = grid.shapes.add_table(3, 3, Inches(1), Inches(2.5), Inches(6), Inches(1.5)).table
    for r, row in enumerate([["部门", "人数", "负责人"], ["销售部", "12", "张三"], ["研发部", "", ""]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    table.cell(2, 1).merge(table.cell(2, 2))
    table.cell(2, 1).text = "待定"
    group = grid.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(3), Inches(4.5), Inches(1), Inches(0.5)).text_frame.text = "组内右"
    group.shapes.add_textbox(Inches(1), Inches(4.5), Inches(1), Inches(0.5)).text_frame.text = "组内左"
    deck.slides.add_slide(deck.slide_layouts[6])
    deck.slides.add_slide(deck.slide_layouts[5]).shapes.title.text = "谢谢"
    deck.save(str(path))
    return path


DECK_TEXT = (
    "员工手册\n人力资源部 2024\n"
    "第一章 休假制度\n年假每年五天\n病假需要医院证明\n备注：年假可以累积到次年三月。\n讲到这里停一下。\n"
    "部门一览\n左上：组织架构\n第二行\n右上：联系人\n部门 | 人数 | 负责人\n销售部 | 12 | 张三\n研发部 | 待定\n"
    "组内左\n组内右\n左下：更新于三月\n"
    "谢谢\n"
)


def write_xlsx(path: Path) -> Path:
    """A staff sheet under a header (dates, numbers, a formula without a cached value, an empty
    row), a sheet with a title row above its header, a hidden sheet of numbers only."""
    import openpyxl

    workbook = openpyxl.Workbook()
    staff = workbook.active
    staff.title = "员工名单"
    staff.append(["姓名", "部门", "入职日期", "工资", "系数"])
    staff.append(["张三", "销售部", datetime.date(2020, 3, 1), 8000.0, 1.0])
    staff.append([None, None, None, None, None])
    staff.append(["李四", None, datetime.datetime(2021, 5, 6, 9, 30), 9500.5, 0.1 + 0.2])
    staff.append(["合计", None, None, "=SUM(D2:D4)", None])
    phones = workbook.create_sheet("通讯录")
    phones.append(["2024年内部通讯录"])
    phones.append(["姓名", "分机"])
    phones.append(["王五", 8001])
    hidden = workbook.create_sheet("年度数据")
    hidden.append([2023, 1200])
    hidden.append([2024, 1350])
    hidden.sheet_state = "hidden"
    workbook.create_sheet("空白")
    workbook.save(str(path))
    return path


BOOK_TEXT = (
    "员工名单\n姓名 | 部门 | 入职日期 | 工资 | 系数\n"
    "姓名: 张三；部门: 销售部；入职日期: 2020-03-01；工资: 8000；系数: 1\n"
    "姓名: 李四；入职日期: 2021-05-06 09:30:00；工资: 9500.5；系数: 0.3\n"
    "姓名: 合计\n"
    "通讯录\n2024年内部通讯录\n姓名 | 分机\n姓名: 王五；分机: 8001\n"
    "年度数据\n2023 | 1200\n2024 | 1350\n"
)

CSV_TEXT = '姓名,部门,备注\n张三,销售部,"负责华东,华南"\n\n李四,,"两行\n备注"\n'
CSV_LINES = "姓名 | 部门 | 备注\n姓名: 张三；部门: 销售部；备注: 负责华东,华南\n姓名: 李四；备注: 两行 备注\n"


def test_slides_are_pages_with_title_headings_and_notes_after_the_body(tmp_path: Path) -> None:
    document = open_document(write_pptx(tmp_path / "deck.pptx"))
    text = "".join(document.blocks())
    assert document.format == "pptx" and text == DECK_TEXT
    assert [(h.level, h.title) for h in document.headings] == [
        (1, "员工手册"), (1, "第一章 休假制度"), (1, "部门一览"), (1, "谢谢")
    ]
    assert all(text[h.start :].startswith(h.title + "\n") for h in document.headings)
    assert len(document.page_starts) == 5
    assert document.page_at(text.index("年假可以")) == 2  # notes stay on their slide
    assert document.page_at(text.index("组内左")) == 3
    assert document.page_at(text.index("谢谢")) == 5  # slide 4 has no text, and no offset of its own


def test_notes_that_begin_with_their_own_label_are_not_labelled_twice(tmp_path: Path) -> None:
    """Regression: notes written "备注：数据来自财务部。" read "备注：备注：数据来自财务部。"."""
    from pptx import Presentation

    deck = Presentation()
    for notes in ("备注：数据来自财务部。\n第二行", "数据来自财务部。"):
        slide = deck.slides.add_slide(deck.slide_layouts[5])
        slide.shapes.title.text = "销售数据"
        slide.notes_slide.notes_text_frame.text = notes
    deck.save(tmp_path / "deck.pptx")
    text = "".join(open_document(tmp_path / "deck.pptx").blocks())
    assert text == "销售数据\n备注：数据来自财务部。\n第二行\n销售数据\n备注：数据来自财务部。\n"


def test_a_deck_without_text_is_refused(tmp_path: Path) -> None:
    from pptx import Presentation

    deck = Presentation()
    deck.slides.add_slide(deck.slide_layouts[6])
    deck.save(str(tmp_path / "blank.pptx"))
    refused(tmp_path / "blank.pptx", "has no text")


def test_sheets_are_headings_and_rows_name_their_columns(tmp_path: Path) -> None:
    document = open_document(write_xlsx(tmp_path / "book.xlsx"))
    text = "".join(document.blocks())
    assert document.format == "xlsx" and text == BOOK_TEXT
    assert "=SUM" not in text  # a formula without a saved value is left out, never printed
    assert [h.title for h in document.headings] == ["员工名单", "通讯录", "年度数据"]  # hidden read, empty left out
    assert all(text[h.start :].startswith(h.title + "\n") for h in document.headings)
    assert document.page_starts == ()


@pytest.mark.parametrize(
    ("name", "data", "encoding"),
    [
        ("staff.csv", CSV_TEXT.encode("gbk"), "gb18030"),  # Chinese Excel's "CSV"
        ("staff.csv", CSV_TEXT.encode("utf-8-sig"), "utf-8-sig"),  # Excel's "CSV UTF-8"
        ("staff.tsv", CSV_TEXT.replace(",", "\t").replace("东\t华", "东,华").encode("utf-8"), "utf-8"),
        ("staff.CSV", CSV_TEXT.replace(",", ";").replace("东;华", "东,华").encode("utf-8"), "utf-8"),
    ],
)
def test_csv_and_tsv_rows_in_any_encoding_and_delimiter(
    tmp_path: Path, name: str, data: bytes, encoding: str
) -> None:
    (tmp_path / name).write_bytes(data)
    document = open_document(tmp_path / name)
    assert (document.format, document.encoding) == ("csv", encoding)
    assert "".join(document.blocks()) == CSV_LINES
    assert document.headings == () and document.page_starts == ()


def test_csv_without_header_and_one_column_csv(tmp_path: Path) -> None:
    (tmp_path / "numbers.csv").write_text("2023,1200\n2024,1350\n", encoding="utf-8")
    assert "".join(open_document(tmp_path / "numbers.csv").blocks()) == "2023 | 1200\n2024 | 1350\n"
    (tmp_path / "faq.csv").write_text("问题\n怎样请假，找谁审批？\n", encoding="utf-8")
    assert "".join(open_document(tmp_path / "faq.csv").blocks()) == "问题\n怎样请假，找谁审批？\n"
    (tmp_path / "commas.csv").write_text(",,\n , ,\n", encoding="utf-8")
    refused(tmp_path / "commas.csv", "no values")


def test_csv_cells_hold_whole_texts(tmp_path: Path) -> None:
    """Regression: a CSV export with an article in one cell (200,000 characters) was refused as
    "not valid CSV ... save it again as CSV", the csv module's default cell limit of 131,072; past
    glmkb's own limit the message says which line and what to do."""
    import csv

    from kb.loaders import delimited

    article = "滚滚长江东逝水，浪花淘尽英雄。" * 13_400  # 201,000 characters
    (tmp_path / "articles.csv").write_text(f"标题,正文\n临江仙,\"{article}\"\n", encoding="utf-8")
    text = "".join(open_document(tmp_path / "articles.csv").blocks())
    assert text.count("滚滚长江") == 13_400 and "临江仙" in text
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(100_000)
        refused(tmp_path / "articles.csv", "a cell longer than 100,000 characters \\(line 2\\); save that text as its own")
    finally:
        csv.field_size_limit(limit)
    assert delimited.MAX_CELL_CHARS <= limit


def test_formats_are_told_by_bytes_and_csv_by_text_and_name(tmp_path: Path) -> None:
    deck, book = write_pptx(tmp_path / "deck.pptx"), write_xlsx(tmp_path / "book.xlsx")
    for source, kind in ((deck, "pptx"), (book, "xlsx")):
        renamed = tmp_path / f"{kind}.bin"
        renamed.write_bytes(source.read_bytes())
        assert detect_format(renamed) == kind and open_document(renamed).format == kind
    (tmp_path / "book.csv").write_bytes(book.read_bytes())  # an XLSX named .csv is an XLSX
    assert open_document(tmp_path / "book.csv").format == "xlsx"
    (tmp_path / "table.txt").write_text(CSV_TEXT, encoding="utf-8")  # a table named .txt is text
    assert open_document(tmp_path / "table.txt").format == "text"
    assert {".pptx", ".xlsx", ".csv", ".tsv"} <= set(SUPPORTED_SUFFIXES)
    assert SUFFIX_FORMATS[".csv"] == frozenset({"text"})  # what the upload check compares with detect_format
    legacy = tmp_path / "old.xls"
    legacy.write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 100)
    message = refused(legacy, "an Office 97-2003 file that is not a Word, Excel or PowerPoint document")
    assert ".pptx" in message and ".xlsx" in message


def rewritten(source: Path, target: Path, member: str, data: bytes) -> Path:
    """``source`` with one archive member replaced."""
    with zipfile.ZipFile(source) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files[member] = data
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return target


def test_damaged_decks_and_workbooks_are_refused_in_one_line(tmp_path: Path) -> None:
    deck, book = write_pptx(tmp_path / "deck.pptx"), write_xlsx(tmp_path / "book.xlsx")
    for source in (deck, book):
        cut = tmp_path / f"cut{source.suffix}"
        cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        refused(cut, "damaged")
    refused(rewritten(deck, tmp_path / "bad.pptx", "ppt/slides/slide2.xml", b"<p:sld"), "damaged PowerPoint")
    refused(rewritten(book, tmp_path / "bad.xlsx", "xl/worksheets/sheet1.xml", b"<worksheet"), "damaged Excel workbook")
    refused(rewritten(book, tmp_path / "bad2.xlsx", "xl/workbook.xml", b"<workbook"), "damaged Excel workbook")


@pytest.mark.parametrize(("suffix", "main_type"), [
    (".ppsx", b"application/vnd.openxmlformats-officedocument.presentationml.slideshow.main+xml"),
    (".potx", b"application/vnd.openxmlformats-officedocument.presentationml.template.main+xml"),
    (".pptm", b"application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml"),
    (".docm", b"application/vnd.ms-word.document.macroEnabled.main+xml"),
    (".dotx", b"application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml"),
])
def test_shows_templates_and_macro_enabled_files_read_as_their_documents(
    suffix: str, main_type: bytes, tmp_path: Path
) -> None:
    """Regression: a .ppsx (a deck saved to open as a slide show) was refused ("save it as
    .pptx") and a .docm (a Word document with macros, common in offices) was called damaged:
    each differs from its .pptx/.docx only in its main part's content type, which
    ``pptx.Presentation`` / ``docx.Document`` check. They read as the same document; nothing in
    them runs."""
    from app.web.manage import check_content
    from tests.fixtures.documents import SourceChapter, write_docx

    if suffix.startswith(".p"):
        source = write_pptx(tmp_path / "source.pptx")
        plain = b"application/vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"
    else:
        source = write_docx(tmp_path / "source.docx", [SourceChapter("第一章 总则", ["宏文档的正文。"])])
        plain = b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
    with zipfile.ZipFile(source) as archive:
        types = archive.read("[Content_Types].xml")
    assert plain in types
    variant = rewritten(source, tmp_path / f"variant{suffix}", "[Content_Types].xml", types.replace(plain, main_type))
    assert check_content(variant) == variant
    read, expected = open_document(variant), open_document(source)
    assert "".join(read.blocks()) == "".join(expected.blocks()) and read.headings == expected.headings


def test_hostile_workbooks_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kb.loaders.sniff as sniff

    refused(zip_bomb(tmp_path / "bomb.xlsx", "xl/workbook.xml"), "zip bomb")
    refused(zip_bomb(tmp_path / "bomb.pptx", "ppt/presentation.xml"), "zip bomb")
    book = write_xlsx(tmp_path / "book.xlsx")
    with zipfile.ZipFile(book) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml").decode()
    # Entities in a sheet: openpyxl parses through defusedxml, which refuses them (never expanded).
    laughs = sheet.replace("<worksheet", LAUGHS + "<worksheet", 1).replace("<t>姓名</t>", "<t>&lol9;</t>")
    laughs = laughs.replace("<t>&#22995;&#21517;</t>", "<t>&lol9;</t>")
    assert "&lol9;" in laughs
    laughs_path = rewritten(book, tmp_path / "laughs.xlsx", "xl/worksheets/sheet1.xml", laughs.encode())
    refused(laughs_path, "damaged Excel workbook .*(invalid XML|[Ee]ntit)")
    # A row numbered near a billion is not padded with a billion empty rows.
    far = sheet.replace('<row r="2"', '<row r="999999999"', 1)
    far_path = rewritten(book, tmp_path / "far.xlsx", "xl/worksheets/sheet1.xml", far.encode())
    refused(far_path, "more than 1,000,000 cells")
    monkeypatch.setattr(sniff, "MAX_CELLS", 12)
    message = refused(book, "more than 12 cells")
    assert "员工名单" in message


def test_upload_check_accepts_office_files_and_csv_by_content(tmp_path: Path) -> None:
    from app.errors import UserError
    from app.web.manage import check_content

    (tmp_path / "staff.csv").write_bytes(CSV_TEXT.encode("gbk"))
    macro_book = write_xlsx(tmp_path / "macros.xlsm")  # a macro-enabled workbook's cells, read as .xlsx
    for path in (write_pptx(tmp_path / "deck.pptx"), write_xlsx(tmp_path / "book.xlsx"), tmp_path / "staff.csv",
                 macro_book):
        assert check_content(path) == path
    assert list(open_document(macro_book).blocks()) == list(open_document(tmp_path / "book.xlsx").blocks())
    (tmp_path / "deck.xlsx").write_bytes((tmp_path / "deck.pptx").read_bytes())
    (tmp_path / "book.csv").write_bytes((tmp_path / "book.xlsx").read_bytes())
    for path in (tmp_path / "deck.xlsx", tmp_path / "book.csv"):
        with pytest.raises(UserError):
            check_content(path)


def test_ingest_build_cites_slide_pages_and_sheet_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ingest.cli import main

    folder = tmp_path / "docs"
    folder.mkdir()
    write_pptx(folder / "deck.pptx")
    write_xlsx(folder / "book.xlsx")
    (folder / "staff.csv").write_bytes(CSV_TEXT.encode("gbk"))
    files = [str(path) for path in sorted(folder.iterdir())]
    root = str(tmp_path / "kbs")
    assert main(["build", *files, "--kb", "office", "--kb-root", root, "--embedding", "none", "-q"]) == 0
    assert "3 added" in capsys.readouterr().out

    def hits(question: str) -> list[dict]:
        assert main(["query", question, "--kb", "office", "--kb-root", root, "--mode", "bm25", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    notes = next(h for h in hits("年假 累积") if "累积" in h["text"])
    assert (Path(notes["source"]).name, notes["page"], notes["section"]) == ("deck.pptx", 2, "第一章 休假制度")
    assert source_label(notes) == "deck.pptx · p.2 · 第一章 休假制度"
    table = next(h for h in hits("研发部 待定") if "待定" in h["text"])
    assert (table["page"], table["section"]) == (3, "部门一览")
    phone = next(h for h in hits("王五 分机") if "王五" in h["text"])
    assert (phone["page"], source_label(phone)) == (None, "book.xlsx · 通讯录")
    assert "姓名: 王五；分机: 8001" in phone["text"]
    row = next(h for h in hits("华东 华南") if Path(h["source"]).name == "staff.csv")
    assert "姓名: 张三；部门: 销售部；备注: 负责华东,华南" in row["text"]
    kb = KnowledgeBase(Path(root), "office", embedding_model="none")
    assert squeeze(kb.get_document_text("deck.pptx")) == squeeze(DECK_TEXT)
    kb.close()


def test_a_docx_novels_volumes_are_headings_over_its_chapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """第N卷 as Heading 1 over 第N章 as Heading 2: the 章 are the chapters (not the volumes), cited
    under their volume."""
    import docx

    from tests.helpers import ingest_hits

    document = docx.Document()
    for volume, chapters in (("第一卷 风起", ("第一章 开始", "第二章 继续")), ("第二卷 云涌", ("第三章 再起",))):
        document.add_heading(volume, level=1)
        for chapter in chapters:
            document.add_heading(chapter, level=2)
            document.add_paragraph(f"{chapter[-2:]}的故事：张三拔剑而起。")
    path = tmp_path / "novel.docx"
    document.save(str(path))
    hits = ingest_hits([path], "再起的故事 继续的故事", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "再起的故事" in h["text"])
    assert hit["text"].startswith("第二卷 云涌")  # the volume's heading opens its first chapter
    assert (hit["chapter"], hit["chapter_title"], hit["section"]) == (3, "再起", "第二卷 云涌 > 第三章 再起")
    hit = next(h for h in hits if "继续的故事" in h["text"])
    assert (hit["chapter"], hit["chapter_title"], hit["section"]) == (2, "继续", "第一卷 风起 > 第二章 继续")


def test_docx_headings_by_outline_level_and_by_the_style_a_custom_style_is_based_on(tmp_path: Path) -> None:
    """Regression: only paragraphs of styles named "Heading N"/"标题 N" were headings, so a
    manual written with its own "一级标题" style (based on Heading 1), a style carrying an outline
    level, or WPS's 大纲级别 set on body paragraphs had no chapters. Outline level 9 ("body
    text") on a paragraph overrides its heading style; levels past 3 are not chapter headings."""
    import docx
    from docx.enum.style import WD_STYLE_TYPE
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    def outline(properties, value: int) -> None:  # noqa: ANN001
        element = OxmlElement("w:outlineLvl")
        element.set(qn("w:val"), str(value))
        properties.append(element)

    document = docx.Document()
    based = document.styles.add_style("一级标题", WD_STYLE_TYPE.PARAGRAPH)
    based.base_style = document.styles["Heading 1"]
    own = document.styles.add_style("章节标题", WD_STYLE_TYPE.PARAGRAPH)
    outline(own.element.get_or_add_pPr(), 1)
    deeper = document.styles.add_style("小节", WD_STYLE_TYPE.PARAGRAPH)
    deeper.base_style = own
    document.add_paragraph("第一章 总则", style="一级标题")
    document.add_paragraph("正文一。")
    document.add_paragraph("第一节 适用范围", style="章节标题")
    document.add_paragraph("一、细则", style="小节")  # inherits 章节标题's outline level: 2
    outline(document.add_paragraph("第二章 假期").paragraph_format.element.get_or_add_pPr(), 0)
    outline(document.add_heading("不是标题的一行", level=2)._p.get_or_add_pPr(), 9)
    outline(document.add_paragraph("四级大纲").paragraph_format.element.get_or_add_pPr(), 3)
    document.add_paragraph("正文二。")
    path = tmp_path / "manual.docx"
    document.save(str(path))
    assert [(h.level, h.title) for h in open_document(path).headings] == [
        (1, "第一章 总则"), (2, "第一节 适用范围"), (2, "一、细则"), (1, "第二章 假期")]
