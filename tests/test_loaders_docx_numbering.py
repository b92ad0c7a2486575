"""Word's automatic numbering in .docx files (``kb/loaders/docx_numbering.py``): the labels Word
draws from numbering.xml ("第一章", "1.2", "（一）", "①") go before their paragraphs, so chapter
detection and citations see them. The documents are built here with python-docx: the default
template's numbering part is replaced through python-docx's oxml, numPr set on paragraphs and styles."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kb.loaders import open_document
from kb.loaders.number_formats import format_number
from kb.splitting import chinese_number, split_chapters

W_NS = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def lvl(ilvl: int, fmt: str, text: str, *, start: int | None = 1, extra: str = "") -> str:
    """A ``w:lvl``; ``extra`` is more of its children (w:suff, w:isLgl, w:lvlRestart, w:pStyle)."""
    begin = f'<w:start w:val="{start}"/>' if start is not None else ""
    return (f'<w:lvl w:ilvl="{ilvl}">{begin}<w:numFmt w:val="{fmt}"/>{extra}'
            f'<w:lvlText w:val="{text}"/></w:lvl>')


def abstract(abstract_id: int, *levels: str, extra: str = "") -> str:
    return f'<w:abstractNum w:abstractNumId="{abstract_id}">{extra}{"".join(levels)}</w:abstractNum>'


def num(num_id: int, abstract_id: int, overrides: str = "") -> str:
    return f'<w:num w:numId="{num_id}"><w:abstractNumId w:val="{abstract_id}"/>{overrides}</w:num>'


def new_document(definitions: str):  # type: ignore[no-untyped-def]
    """A python-docx document whose numbering part holds only ``definitions``."""
    import docx
    from docx.oxml import parse_xml

    document = docx.Document()
    root = document.part.numbering_part.element
    for child in list(root):
        root.remove(child)
    for child in list(parse_xml(f"<w:numbering {W_NS}>{definitions}</w:numbering>")):
        root.append(child)
    return document


def number(properties, num_id: int | None, ilvl: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """Set ``w:numPr`` on a ``w:pPr`` (a paragraph's or a style's)."""
    num_pr = properties.get_or_add_numPr()
    if ilvl is not None:
        num_pr.get_or_add_ilvl().val = ilvl
    if num_id is not None:
        num_pr.get_or_add_numId().val = num_id


def add(  # type: ignore[no-untyped-def]
    document, text: str, num_id: int | None = None, ilvl: int | None = None, style: str | None = None
):
    paragraph = document.add_paragraph(text, style=style)
    if num_id is not None or ilvl is not None:
        number(paragraph._p.get_or_add_pPr(), num_id, ilvl)
    return paragraph


def lines(document, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    document.save(str(path))
    return "".join(open_document(path).blocks()).splitlines()


def test_chapter_heading_list_makes_chapters(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: Heading 1 paragraphs numbered by a "第%1章" list in
    chineseCounting read as "总则", "休假", ..., so a handbook had no 第N章 chapters to narrow a
    question to or to cite."""
    document = new_document(abstract(0, lvl(0, "chineseCounting", "第%1章")) + num(1, 0))
    titles = ["总则", "招聘", "入职", "考勤", "休假", "薪酬", "福利", "培训", "考核", "奖惩", "离职", "附则"]
    for title in titles:
        number(document.add_heading(title, level=1)._p.get_or_add_pPr(), 1, 0)
        document.add_paragraph(f"{title}的具体规定。")
    path = tmp_path / "handbook.docx"
    document.save(str(path))
    loaded = open_document(path)
    text = "".join(loaded.blocks())
    numerals = ["一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二"]
    assert [h.title for h in loaded.headings] == [f"第{n}章 {t}" for n, t in zip(numerals, titles)]
    chapters = loaded.chapters(length=len(text))
    assert chapters is not None
    assert [(c.number, c.heading, c.title) for c in chapters] == [
        (i + 1, f"第{n}章", t) for i, (n, t) in enumerate(zip(numerals, titles))]
    # The text alone (as a .txt of it would be read) gives the same chapters.
    assert [(c.number, c.title) for c in split_chapters(text) if c.number] == [(i + 1, t) for i, t in enumerate(titles)]


def test_numbered_chapters_are_cited(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Word's automatic numbering was lost: a passage under an auto-numbered "第二章 休假" was cited
    as chapter 2 "休假" by position only, without the 第二章 a reader looks for."""
    from tests.helpers import ingest_hits

    document = new_document(abstract(0, lvl(0, "chineseCounting", "第%1章")) + num(1, 0))
    for title, body in (("总则", "本制度适用于全体员工。"), ("休假", "员工每年享有带薪年假十五天。")):
        number(document.add_heading(title, level=1)._p.get_or_add_pPr(), 1)
        document.add_paragraph(body)
    path = tmp_path / "制度.docx"
    document.save(str(path))
    hits = ingest_hits([path], "带薪年假", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "带薪年假" in h["text"])
    assert hit["text"].startswith("第二章 休假")
    assert (hit["chapter"], hit["chapter_title"]) == (2, "休假")


def test_multilevel_list_restarts_deeper_levels(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: a manual's "1.1 下载 / 1.2 运行 / 2.1 网络" sections
    (a "%1.%2" multilevel list) read as bare titles. Level 2 restarts when level 1 advances; a
    level with lvlRestart 1 restarts only when level 1 does."""
    definitions = abstract(
        0,
        lvl(0, "decimal", "%1"),
        lvl(1, "decimal", "%1.%2"),
        lvl(2, "chineseCounting", "（%3）", extra='<w:lvlRestart w:val="1"/>'),
    ) + num(7, 0)
    document = new_document(definitions)
    for text, ilvl in (("安装", 0), ("下载", 1), ("注意", 2), ("运行", 1), ("提示", 2),
                       ("配置", 0), ("网络", 1), ("代理", 2)):
        add(document, text, 7, ilvl)
    assert lines(document, tmp_path / "manual.docx") == [
        "1 安装", "1.1 下载", "（一） 注意", "1.2 运行", "（二） 提示", "2 配置", "2.1 网络", "（一） 代理"]


def test_start_override_restarts_and_instances_share_counters(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: lists read without their "1." "2." ... A w:num with a
    startOverride restarts at its value; two w:num of one abstractNum continue one count; a
    lvlOverride's w:lvl changes the look for its w:num only; numId 0 means no number."""
    definitions = (
        abstract(0, lvl(0, "decimal", "%1.", start=1))
        + abstract(1, lvl(0, "decimal", "%1.", start=1))
        + num(1, 0)
        + num(2, 0)
        + num(3, 0, '<w:lvlOverride w:ilvl="0"><w:startOverride w:val="5"/></w:lvlOverride>')
        + num(4, 1, '<w:lvlOverride w:ilvl="0"><w:lvl w:ilvl="0"><w:numFmt w:val="upperLetter"/>'
                    '<w:lvlText w:val="%1)"/></w:lvl></w:lvlOverride>')
    )
    document = new_document(definitions)
    for text, num_id in (("甲", 1), ("乙", 1), ("丙", 2), ("丁", 3), ("戊", 3), ("己", 0), ("庚", 4), ("辛", 4)):
        add(document, text, num_id, 0)
    assert lines(document, tmp_path / "lists.docx") == [
        "1. 甲", "2. 乙", "3. 丙", "5. 丁", "6. 戊", "己", "A) 庚", "B) 辛"]


def test_numbering_style_links_and_custom_formats(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: an abstractNum that takes its levels from a numbering
    style (w:numStyleLink to the abstractNum with that w:styleLink) gave no numbers; nor did a
    Word 2010 custom "001, 002, ..." format written inside mc:AlternateContent."""
    mc = 'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"'
    custom = (f'<w:lvl w:ilvl="0"><w:start w:val="1"/><mc:AlternateContent {mc}><mc:Choice Requires="w14">'
              '<w:numFmt w:val="custom" w:format="001, 002, 003, ..."/></mc:Choice>'
              '<mc:Fallback><w:numFmt w:val="decimal"/></mc:Fallback></mc:AlternateContent>'
              '<w:lvlText w:val="%1"/></w:lvl>')
    definitions = (
        abstract(0, lvl(0, "upperRoman", "%1."), extra='<w:styleLink w:val="条款列表"/>')
        + abstract(1, extra='<w:numStyleLink w:val="条款列表"/>')
        + abstract(2, custom)
        + num(1, 1)
        + num(2, 2)
    )
    document = new_document(definitions)
    for text, num_id in (("目的", 1), ("范围", 1), ("编号甲", 2), ("编号乙", 2)):
        add(document, text, num_id, 0)
    assert lines(document, tmp_path / "linked.docx") == ["I. 目的", "II. 范围", "001 编号甲", "002 编号乙"]


def test_style_linked_numbering(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: "Heading 1" and "Heading 2" linked to a multilevel
    "第%1章 / 第%2节" list (the numPr on the styles, a level found by its w:pStyle) gave headings
    without 第N章, so a policy document had no chapters. A style based on Heading 1 inherits it;
    numId 0 on a paragraph turns it off."""
    from docx.enum.style import WD_STYLE_TYPE

    definitions = abstract(
        0,
        lvl(0, "chineseCounting", "第%1章", extra='<w:pStyle w:val="Heading1"/>'),
        lvl(1, "chineseCounting", "第%2节", extra='<w:pStyle w:val="Heading2"/><w:suff w:val="space"/>'),
    ) + num(3, 0)
    document = new_document(definitions)
    number(document.styles["Heading 1"].element.get_or_add_pPr(), 3, 0)
    number(document.styles["Heading 2"].element.get_or_add_pPr(), 3)  # its level from w:pStyle
    custom = document.styles.add_style("一级标题", WD_STYLE_TYPE.PARAGRAPH)
    custom.base_style = document.styles["Heading 1"]
    document.add_heading("总则", level=1)
    document.add_heading("适用范围", level=2)
    document.add_paragraph("本办法适用于公司全体员工。")
    document.add_heading("定义", level=2)
    document.add_paragraph("假期", style="一级标题")
    document.add_heading("年假", level=2)
    add(document, "附则", 0, style="Heading 1")
    path = tmp_path / "policy.docx"
    document.save(str(path))
    loaded = open_document(path)
    assert [(h.level, h.title) for h in loaded.headings] == [
        (1, "第一章 总则"), (2, "第一节 适用范围"), (2, "第二节 定义"), (1, "第二章 假期"), (2, "第一节 年假"), (1, "附则")]
    text = "".join(loaded.blocks())
    assert [(c.number, c.title) for c in loaded.chapters(length=len(text)) or [] if c.heading] == [(1, "总则"), (2, "假期")]


def test_bullets_are_plain_and_symbol_glyphs_never_show(tmp_path: Path) -> None:
    """Word's automatic numbering was lost, and a bullet must not come back as the private-use
    character of its Symbol/Wingdings font (U+F0B7, U+F0A7) or a Courier "o": bullets read "• "."""
    definitions = abstract(
        0,
        lvl(0, "bullet", "\uf0b7"),
        lvl(1, "bullet", "o"),
        lvl(2, "bullet", "\uf0a7"),
    ) + num(2, 0)
    document = new_document(definitions)
    for text, ilvl in (("水果", 0), ("苹果", 1), ("红富士", 2), ("蔬菜", 0)):
        add(document, text, 2, ilvl)
    document.add_paragraph("默认模板的项目符号", style="List Bullet")  # the style's numbering is replaced: no label
    got = lines(document, tmp_path / "bullets.docx")
    assert got == ["• 水果", "• 苹果", "• 红富士", "• 蔬菜", "默认模板的项目符号"]
    assert not any(0xE000 <= ord(c) <= 0xF8FF for line in got for c in line)


def test_default_templates_list_styles(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: paragraphs of the "List Number" style (numbered by the
    style, not the text) read without their numbers. An empty numbered paragraph counts, as in
    Word, but shows no bare label."""
    import docx

    document = docx.Document()
    for text in ("打开电源", "", "登录系统", "开始使用"):
        document.add_paragraph(text, style="List Number")
    document.add_paragraph("注意安全", style="List Bullet")
    assert lines(document, tmp_path / "steps.docx") == ["1. 打开电源", "3. 登录系统", "4. 开始使用", "• 注意安全"]


def test_legal_numbering_suffixes_and_tables(tmp_path: Path) -> None:
    """Word's automatic numbering was lost: isLgl (legal numbering) shows every level's number in
    decimal ("1.1" under "一、"); w:suff nothing puts no space after the label; a list continues
    through a table's cells and reads in them."""
    definitions = abstract(
        0,
        lvl(0, "chineseCounting", "%1、", extra='<w:suff w:val="nothing"/>'),
        lvl(1, "decimal", "%1.%2", extra="<w:isLgl/>"),
    ) + num(1, 0)
    document = new_document(definitions)
    add(document, "总体要求", 1, 0)
    add(document, "目标", 1, 1)
    table = document.add_table(rows=1, cols=2)
    number(table.cell(0, 0).paragraphs[0]._p.get_or_add_pPr(), 1, 0)
    table.cell(0, 0).paragraphs[0].add_run("表内条款")
    table.cell(0, 1).paragraphs[0].add_run("说明")
    add(document, "主要任务", 1, 0)
    assert lines(document, tmp_path / "legal.docx") == ["一、总体要求", "1.1 目标", "二、表内条款 | 说明", "三、主要任务"]


def test_malformed_numbering_part_still_loads(tmp_path: Path) -> None:
    """Word's automatic numbering must never cost the document: a numbering.xml that is not XML
    (python-docx refuses the whole package for it) reads as no numbering, and odd values (an
    unknown format, a missing abstractNum or start, a level not defined, an unknown numId) fall
    back to decimal or to no label."""
    document = new_document(
        abstract(0, lvl(0, "klingon", "%1.", start=None), lvl(1, "decimal", "%1.%2", start=None))
        + num(1, 0)
        + num(2, 9)  # no abstractNum 9
        + '<w:num w:numId="3"><w:abstractNumId w:val="zero"/></w:num>'
    )
    for text, num_id, ilvl in (("一项", 1, 0), ("二项", 1, 1), ("无定义", 2, 0), ("坏编号", 3, 0),
                               ("未知", 42, 0), ("无此级", 1, 5)):
        add(document, text, num_id, ilvl)
    path = tmp_path / "odd.docx"
    assert lines(document, path) == ["1. 一项", "1.1 二项", "无定义", "坏编号", "未知", "无此级"]

    broken = tmp_path / "broken.docx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(broken, "w", zipfile.ZIP_DEFLATED) as target:
        assert "word/numbering.xml" in source.namelist()
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, b"<w:numbering oops" if info.filename == "word/numbering.xml" else data)
    assert "".join(open_document(broken).blocks()).splitlines() == ["一项", "二项", "无定义", "坏编号", "未知", "无此级"]


@pytest.mark.parametrize(
    ("fmt", "numbers", "expected"),
    [
        ("decimal", (1, 12), ["1", "12"]),
        ("decimalZero", (1, 9, 10), ["01", "09", "10"]),
        ("upperLetter", (1, 26, 27, 28), ["A", "Z", "AA", "BB"]),
        ("lowerLetter", (2,), ["b"]),
        ("upperRoman", (4, 9, 14, 1994), ["IV", "IX", "XIV", "MCMXCIV"]),
        ("lowerRoman", (3,), ["iii"]),
        ("chineseCounting", (1, 10, 11, 20, 21), ["一", "十", "十一", "二十", "二十一"]),
        ("chineseCountingThousand", (101, 110, 1010), ["一百零一", "一百一十", "一千零一十"]),
        ("chineseLegalSimplified", (1, 2, 3, 10, 11), ["壹", "贰", "叁", "壹拾", "壹拾壹"]),
        ("ideographTraditional", (1, 2, 3, 10), ["甲", "乙", "丙", "癸"]),
        ("ideographZodiac", (1, 2, 12), ["子", "丑", "亥"]),
        ("decimalEnclosedCircle", (1, 20, 21), ["①", "⑳", "21"]),
        ("decimalEnclosedCircleChinese", (3,), ["③"]),
        ("decimalFullWidth", (12,), ["１２"]),
        ("none", (3,), [""]),
        ("someFutureFormat", (7,), ["7"]),
    ],
)
def test_number_formats(fmt: str, numbers: tuple[int, ...], expected: list[str]) -> None:
    assert [format_number(n, fmt) for n in numbers] == expected


@pytest.mark.parametrize("fmt", ["chineseCounting", "chineseCountingThousand", "chineseLegalSimplified"])
def test_chinese_formats_read_back_by_the_chapter_scanner(fmt: str) -> None:
    """The labels' Chinese numerals are the ones ``kb.splitting`` reads: 第N章 chapters keep N."""
    assert [chinese_number(format_number(n, fmt)) for n in range(1, 200)] == list(range(1, 200))
