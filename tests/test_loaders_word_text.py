"""DOCX text that python-docx's ``Paragraph.text`` and body iteration leave out (``kb.loaders.word_text``):
tracked insertions, smart tags, simple fields, content controls, text boxes; and what Word does not
show as text (deletions, a drawing's fallback copy, ruby annotations, its own table of contents).
The documents are python-docx's with the XML Word writes for each of these spliced in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kb.loaders import open_document

NS = ('xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
      'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
      'xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape"')


def element(tag: str, inner: str, attributes: str = "") -> Any:
    """``<w:tag attributes>inner</w:tag>`` as an element python-docx can splice in."""
    from docx.oxml import parse_xml

    return parse_xml(f"<w:{tag} {NS} {attributes}>{inner}</w:{tag}>")


def run(text: str) -> str:
    return f'<w:r><w:t xml:space="preserve">{text}</w:t></w:r>'


def text_box(text: str) -> str:
    """A run's content anchoring a text box, as Word 2010+ writes it: the shape, then a VML copy."""
    box = f"<w:txbxContent><w:p>{run(text)}</w:p></w:txbxContent>"
    return (f'<mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wps:txbx>{box}</wps:txbx></w:drawing>'
            f"</mc:Choice><mc:Fallback><w:pict>{box}</w:pict></mc:Fallback></mc:AlternateContent>")


def test_edits_fields_controls_and_text_boxes_are_read_once_as_word_shows_them(tmp_path: Path) -> None:
    """Regression: all of these were lost but each paragraph's plain runs (an unaccepted edit of a
    shared manual, a template's content controls, a flyer's text boxes, a field's result)."""
    import docx

    document = docx.Document()
    edited = document.add_paragraph("年假")._p
    edited.append(element("ins", run("十五"), 'w:id="1" w:author="人事"'))
    edited.append(element("del", "<w:r><w:delText>十</w:delText></w:r>", 'w:id="2" w:author="人事"'))
    edited.append(element("smartTag", run("天，"), 'w:element="x"'))
    edited.append(element("fldSimple", run("见第 3 页"), 'w:instr="PAGEREF a"'))
    document.add_paragraph("院")._p.append(
        element("r", f"<w:ruby><w:rubyPr/><w:rt>{run('zhǎng')}</w:rt><w:rubyBase>{run('长')}</w:rubyBase></w:ruby>"))
    document.add_paragraph("活动通知：")._p.append(element("r", text_box("地点：三楼会议室")))
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).paragraphs[0]._p.append(element("ins", run("新增条款"), 'w:id="3" w:author="a"'))
    table.cell(0, 1).paragraphs[0]._p.append(element("r", text_box("框内")))
    body = document.element.body
    body.insert(0, element("sdt", '<w:sdtPr><w:docPartObj><w:docPartGallery w:val="Table of Contents"/>'
                                  f"</w:docPartObj></w:sdtPr><w:sdtContent><w:p>{run('第一章 总则 …… 1')}</w:p>"
                                  "</w:sdtContent>"))
    body.insert(2, element("sdt", f"<w:sdtPr/><w:sdtContent><w:p>{run('表单里的正文')}</w:p></w:sdtContent>"))
    path = tmp_path / "manual.docx"
    document.save(str(path))
    assert "".join(open_document(path).blocks()) == (
        "年假十五天，见第 3 页\n表单里的正文\n院长\n活动通知：\n地点：三楼会议室\n新增条款 | 框内\n")


def test_breaks_and_tabs_read_as_python_docx_reads_them(tmp_path: Path) -> None:
    """Differential: for plain runs with tabs and line, page and column breaks the text is
    python-docx's own ``Paragraph.text`` (lines split where it has a newline)."""
    import docx

    document = docx.Document()
    paragraph = document.add_paragraph()
    first = paragraph.add_run("甲\t乙")
    first.add_break()
    paragraph.add_run("丙")
    from docx.enum.text import WD_BREAK

    paragraph.add_run("丁").add_break(WD_BREAK.PAGE)
    paragraph.add_run("戊").add_break(WD_BREAK.COLUMN)
    path = tmp_path / "breaks.docx"
    document.save(str(path))
    expected = "".join(line.rstrip() + "\n" for line in [paragraph.text] if line.strip())
    assert "".join(open_document(path).blocks()) == expected


def test_a_table_of_contents_written_as_a_field_is_left_out(tmp_path: Path) -> None:
    """Word and WPS also write a table of contents as plain paragraphs of styles "TOC 1" / "目录 1"
    (a field's result): left out as the one in a content control is (it repeats the headings)."""
    import docx
    from docx.enum.style import WD_STYLE_TYPE

    document = docx.Document()
    for name in ("TOC 1", "目录 2"):
        document.styles.add_style(name, WD_STYLE_TYPE.PARAGRAPH)
    document.add_paragraph("第一章 总则\t1", style="TOC 1")
    document.add_paragraph("第一节 范围\t1", style="目录 2")
    document.add_heading("第一章 总则", level=1)
    document.add_paragraph("正文。")
    path = tmp_path / "contents.docx"
    document.save(str(path))
    loaded = open_document(path)
    assert "".join(loaded.blocks()) == "第一章 总则\n正文。\n" and [h.title for h in loaded.headings] == ["第一章 总则"]
