"""Formats as users bring them, read as their readers see them. Guards against:

- a PDF whose running header names the chapter (第一回 ... atop every page of chapter one): the
  header stayed on every page, the splitter saw each heading many times and cited chapter one's
  text as the preamble and chapter two's as chapter one;
- a book's left and right pages headed differently (its title on even pages only): with an odd
  number of pages the title recurred on fewer than half of them and stayed in the text;
- one-page chapters headed ``第1章``, ``第2章``...: digits folded, the headings looked like one
  running header and were all removed;
- a table of numbers running over pages: its rows at page edges looked like headers and were lost;
- a DOCX with a tracked move: the moved text was read at its old place (``w:moveFrom``) and again
  at its new one;
- an EPUB whose table of contents links to chapters inside one file (``text.xhtml#c2``): every
  entry past the file's first 4096 characters was placed at the file's start, so all the text
  was cited as the last chapter;
- HTML/EPUB ruby: the annotation was read into the text (涿(zhuō)县).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from docx import Document
from docx.oxml import parse_xml

from kb.loaders import open_document
from kb.loaders.layout import remove_headers_and_footers
from kb.splitting import split_chapters

HEADINGS = ["第一回 宴桃园豪杰三结义", "第二回 张翼德怒鞭督邮", "第三回 议温明董卓叱丁原"]


PROSE = (
    "话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。及秦灭之后，楚、汉分争，又并入于汉。汉朝自高祖斩白蛇而起义，"
    "一统天下，后来光武中兴，传至献帝，遂分为三国。推其致乱之由，殆始于桓、灵二帝。桓帝禁锢善类，崇信宦官。及桓帝崩，灵帝即位，"
    "大将军窦武、太傅陈蕃共相辅佐。时有宦官曹节等弄权，窦武、陈蕃谋诛之，机事不密，反为所害，中涓自此愈横。"
)


def body(page: int, line: int) -> str:
    """A line of prose of its own for each page and line (no two alike, digits aside)."""
    start = (page * 8 + line) % (len(PROSE) - 30)
    return PROSE[start : start + 30]


def test_running_headers_that_name_the_chapter_leave_each_heading_once() -> None:
    pages = []
    for chapter, heading in enumerate(HEADINGS):
        for page in range(3):
            number = chapter * 3 + page + 1
            lines = [heading, f"- {number} -"] + ([heading] if page == 0 else [])
            pages.append(lines + [body(number, i) for i in range(5)])
    text = "\n".join(line for lines in remove_headers_and_footers(pages) for line in lines)
    assert [text.count(heading) for heading in HEADINGS] == [1, 1, 1]
    chapters = split_chapters(text)
    assert [c.number for c in chapters] == [1, 2, 3]
    assert body(4, 0) in text[chapters[1].start : chapters[1].end]


def test_a_header_on_every_other_page_goes_with_an_odd_number_of_pages() -> None:
    pages = [(["三国演义"] if n % 2 == 0 else []) + [body(n, i) for i in range(4)] + [str(n)]
             for n in range(1, 8)]
    kept = remove_headers_and_footers(pages)
    assert not any("三国演义" in line for lines in kept for line in lines)
    assert sum(len(lines) for lines in kept) == 7 * 4


def test_one_page_chapters_keep_their_numbered_headings() -> None:
    pages = [[f"第{n}章"] + [body(n, i) for i in range(4)] for n in range(1, 7)]
    kept = remove_headers_and_footers(pages)
    assert [lines[0] for lines in kept] == [f"第{n}章" for n in range(1, 7)]


def test_a_table_of_numbers_over_pages_keeps_its_rows() -> None:
    pages = [[f"{2000 + page * 10 + row} {page * 7 + row} {row * 13}" for row in range(10)]
             for page in range(6)]
    assert remove_headers_and_footers(pages) == pages


def test_running_headers_are_removed_from_a_pdf(tmp_path: Path) -> None:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    pdfmetrics.registerFont(UnicodeCIDFont("STSong-Light"))
    path = tmp_path / "novel.pdf"
    pdf = canvas.Canvas(str(path))
    for chapter, heading in enumerate(HEADINGS):
        for page in range(2):
            number = chapter * 2 + page + 1
            pdf.setFont("STSong-Light", 9)
            pdf.drawString(60, 800, heading)
            pdf.drawCentredString(300, 30, f"- {number} -")
            pdf.setFont("STSong-Light", 12)
            lines = ([heading] if page == 0 else []) + [body(number, i) for i in range(6)]
            for i, line in enumerate(lines):
                pdf.drawString(60, 760 - 20 * i, line)
            pdf.showPage()
    pdf.save()
    text = "".join(open_document(path).blocks())
    assert [text.count(heading) for heading in HEADINGS] == [1, 1, 1]
    assert [c.number for c in split_chapters(text)] == [1, 2, 3]


def test_a_tracked_move_is_read_once_at_its_new_place(tmp_path: Path) -> None:
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" w:author="a"'
    document = Document()
    old = document.add_paragraph("话说天下大势，")
    old._p.append(parse_xml(f'<w:moveFrom {w} w:id="1"><w:r><w:t>被移走的一句。</w:t></w:r></w:moveFrom>'))
    new = document.add_paragraph("周末七国分争。")
    new._p.append(parse_xml(f'<w:moveTo {w} w:id="2"><w:r><w:t>被移走的一句。</w:t></w:r></w:moveTo>'))
    document.save(tmp_path / "moved.docx")
    assert "".join(open_document(tmp_path / "moved.docx").blocks()) == "话说天下大势，\n周末七国分争。被移走的一句。\n"


def _epub_of_one_file(path: Path, chapters: list[tuple[str, str]]) -> Path:
    """An EPUB 2 whose NCX links to each chapter's ``<h2 id>`` inside one XHTML file."""
    text = "".join(f'<h2 id="c{i}">{title}</h2><p>{prose}</p>' for i, (title, prose) in enumerate(chapters))
    points = "".join(
        f'<navPoint id="n{i}"><navLabel><text>{title}</text></navLabel>'
        f'<content src="text.xhtml#c{i}"/></navPoint>'
        for i, (title, _) in enumerate(chapters)
    )
    with zipfile.ZipFile(path, "w") as epub:
        epub.writestr("mimetype", "application/epub+zip")
        epub.writestr(
            "META-INF/container.xml",
            '<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
            '<rootfile full-path="content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        epub.writestr(
            "content.opf",
            '<package xmlns="http://www.idpf.org/2007/opf" version="2.0"><manifest>'
            '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>'
            '<item id="text" href="text.xhtml" media-type="application/xhtml+xml"/></manifest>'
            '<spine toc="ncx"><itemref idref="text"/></spine></package>',
        )
        epub.writestr("toc.ncx", f'<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/"><navMap>{points}</navMap></ncx>')
        epub.writestr("text.xhtml", f'<html xmlns="http://www.w3.org/1999/xhtml"><body>{text}</body></html>')
    return path


def test_epub_chapters_linked_inside_one_file_start_at_their_headings(tmp_path: Path) -> None:
    chapters = [(title, f"{title[:3]}的正文。" * 1500) for title in HEADINGS]
    document = open_document(_epub_of_one_file(tmp_path / "one.epub", chapters))
    text = "".join(document.blocks())
    assert [text[h.start :].split("\n", 1)[0] for h in document.headings] == HEADINGS
    found = document.chapters(length=len(text))
    assert [c.number for c in found] == [1, 2, 3]
    assert text[found[1].start : found[1].end].count("第二回的正文。") == 1500


def test_html_ruby_annotations_are_not_read_into_the_text(tmp_path: Path) -> None:
    path = tmp_path / "ruby.html"
    path.write_text(
        '<html><head><meta charset="utf-8"></head><body>'
        "<p><ruby>涿<rp>(</rp><rt>zhuō</rt><rp>)</rp></ruby>县人。</p></body></html>",
        encoding="utf-8",
    )
    assert "".join(open_document(path).blocks()) == "涿县人。\n"


def test_a_line_of_dialogue_at_the_edges_of_nearby_pages_is_kept() -> None:
    """Guards the run rule above: a short line that ends a sentence (“好。”) at the top or bottom of
    three nearby pages is dialogue, not a running header, and stays on every page."""
    plain = [[PROSE[i:] + "。", PROSE[: 20 + i]] for i in range(6)]
    pages = [["“好。”", PROSE, PROSE[:30]], [PROSE, PROSE[:40], "“好。”"], ["“好。”", PROSE, PROSE[:50]], *plain]
    out = remove_headers_and_footers(pages)
    assert sum(line == "“好。”" for lines in out for line in lines) == 3
