"""HTML and EPUB text read as a browser lays it out. Guards against:

- a line break in the HTML source inside Chinese text (``周末七国分争，\\n并入于秦``) read as a
  space, which split the sentence's words for search (browsers drop such a break between two
  East Asian wide characters, CSS Text 3's segment break transformation, and keep a space
  between Latin words); EPUB and MOBI read their XHTML through the same reader;
- a heading, a table cell or an EPUB table-of-contents entry with inline markup
  (``<h1>三国<b>演义</b></h1>``) read as 三国 演义: its text pieces were joined with spaces. A
  heading's own source line break stays a space (``第一回\n宴桃园``: the chapter pattern needs it).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from kb.loaders import open_document

WRAPPED = "<p>话说天下大势，分久必合，合久必分。周末七国分争，\n  并入于秦。及秦灭之后，<b>楚</b>、汉分争，\n又并入于汉。</p>"


def _text(path: Path) -> str:
    return "".join(open_document(path).blocks())


def test_a_wrapped_source_line_joins_chinese_and_spaces_latin(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    latin = "<p>The Romance of the\nThree Kingdoms, 共\n120回。零宽\u200b\n空格</p>"
    page.write_text(f"<html><body><h1>三国演义</h1>{WRAPPED}{latin}</body></html>", encoding="utf-8")
    lines = _text(page).splitlines()
    assert lines[1] == "话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。及秦灭之后，楚、汉分争，又并入于汉。"
    assert lines[2] == "The Romance of the Three Kingdoms, 共 120回。零宽\u200b空格"


def test_inline_markup_in_headings_and_cells_adds_no_space(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    table = "<table><tr><td>刘<b>备</b></td><td>字玄德<br>涿郡人</td></tr></table>"
    heading = "<h2>第一回　宴<i>桃园</i>豪杰三结义<ruby>涿<rt>zhuō</rt></ruby></h2>"
    page.write_text(f"<html><body><h1>三国<b>演义</b></h1>{heading}<p>正文。</p>{table}</body></html>",
                    encoding="utf-8")
    document = open_document(page)
    assert [h.title for h in document.headings] == ["三国演义", "第一回 宴桃园豪杰三结义涿"]
    assert "刘备 | 字玄德 涿郡人" in "".join(document.blocks()).splitlines()


def test_an_epub_reads_wrapped_lines_and_marked_up_toc_titles_alike(tmp_path: Path) -> None:
    book = tmp_path / "book.epub"
    xhtml = ('<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title>'
             '</head><body><h1 id="c1">第一回\n宴桃园</h1>' + WRAPPED + "</body></html>")
    ncx = ('<?xml version="1.0"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><navMap>'
           '<navPoint id="n1"><navLabel><text>第一回\n宴桃园</text></navLabel><content src="c1.xhtml#c1"/></navPoint>'
           "</navMap></ncx>")
    opf = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0"><manifest>'
           '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>'
           '<item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/></manifest>'
           '<spine toc="ncx"><itemref idref="c1"/></spine></package>')
    with zipfile.ZipFile(book, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr("META-INF/container.xml", '<?xml version="1.0"?><container version="1.0" '
                         'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles><rootfile '
                         'full-path="content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>')
        archive.writestr("content.opf", opf)
        archive.writestr("toc.ncx", ncx)
        archive.writestr("c1.xhtml", xhtml)
    document = open_document(book)
    # a heading keeps its source line break as a space: 第一回 宴桃园 is still chapter 1's heading
    assert [(h.start, h.title) for h in document.headings] == [(0, "第一回 宴桃园")]
    assert "周末七国分争，并入于秦。" in "".join(document.blocks())
