"""OpenDocument (.odt, .ods, .odp): real LibreOffice files against the DOCX/PPTX/XLSX they were made
from, read by those formats' own loaders (differential), the inline markup of a paragraph, and
refusals. The files in tests/data/odf were written by LibreOffice 7.4 (``soffice --headless
--convert-to odt|odp|ods``) from the documents the tests' writers make; ``python -m
tests.test_loaders_odf`` remakes them (needs LibreOffice Writer, Calc and Impress, which CI does
not install)."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import pytest

from kb.loaders import SUFFIX_FORMATS, SUPPORTED_SUFFIXES, detect_format, open_document
from tests.fixtures.documents import SourceChapter, write_docx
from tests.helpers import ingest_hits, libreoffice_convert
from tests.test_loaders_doc import write_manual
from tests.test_loaders_hostile import refused
from tests.test_loaders_office import write_pptx, write_xlsx

FIXTURES = Path(__file__).parent / "data" / "odf"
CHAPTERS = [
    SourceChapter("第一章 休假制度", ["年假每年五天，可以累积到次年三月。", "病假需要医院证明。"]),
    SourceChapter("第二章 报销流程", ["出差费用在回来后十天内报销。"]),
]
TABLE = [["姓名", "部门"], ["张三", "销售部"], ["李四", ""]]
_MIMETYPE = "application/vnd.oasis.opendocument.text"
_NAMESPACES = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0"'
)


def write_chapters(path: Path) -> Path:
    return write_docx(path, CHAPTERS, title="员工手册", table=TABLE)


SOURCES = {"manual.odt": write_manual, "chapters.odt": write_chapters, "office.odp": write_pptx, "office.ods": write_xlsx}


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_opendocument_reads_as_its_office_source(name: str, tmp_path: Path) -> None:
    """Differential: the same text, headings and pages as the DOCX/PPTX/XLSX loader reads from the
    file LibreOffice converted. One known difference: LibreOffice computes the sheet's formula
    (=SUM(D2:D4)), which openpyxl leaves empty without a saved value."""
    odf = open_document(FIXTURES / name)
    source = open_document(SOURCES[name](tmp_path / ("source" + {"t": ".docx", "p": ".pptx", "s": ".xlsx"}[name[-1]])))
    assert (odf.format, detect_format(FIXTURES / name)) == (name[-3:], name[-3:])
    text, expected = "".join(odf.blocks()), "".join(source.blocks())
    if name == "office.ods":
        expected = expected.replace("姓名: 合计\n", "姓名: 合计；工资: 17500.5\n")
    assert text == expected
    shift = len(text) - len("".join(source.blocks()))  # the formula's value moves later headings
    assert [(h.level, h.title) for h in odf.headings] == [(h.level, h.title) for h in source.headings]
    assert [h.start for h in odf.headings] == [h.start + (shift if h.start > 0 else 0) for h in source.headings]
    assert odf.page_starts == source.page_starts
    if name == "chapters.odt":
        assert [h.title for h in odf.headings] == [c.heading for c in CHAPTERS]
        assert "张三 | 销售部\n李四 |\n" in text


def test_chapters_and_citations_of_an_odt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hits = ingest_hits([FIXTURES / "chapters.odt"], "出差 报销", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "出差" in h["text"])
    assert hit["chapter"] == 2 and hit["chapter_title"] == "报销流程"


def test_a_paragraphs_markup_becomes_its_text(tmp_path: Path) -> None:
    """Runs of spaces (``text:s``), tabs and line breaks are characters; spans and links keep
    their text; a footnote's body, a comment, a tracked deletion and the table of contents are
    not text; a text box anchored in a paragraph follows it; list items are lines; a heading
    past level 3 is a plain line."""
    body = (
        '<text:table-of-content><text:index-body><text:p>目录 第一章 ... 1</text:p></text:index-body>'
        '</text:table-of-content>'
        '<text:tracked-changes><text:changed-region><text:deletion><text:p>删掉的话</text:p></text:deletion>'
        '</text:changed-region></text:tracked-changes>'
        '<text:h text:outline-level="1">第一章 <text:span>总则</text:span></text:h>'
        '<text:p>甲<text:s text:c="3"/>乙<text:tab/>丙<text:line-break/>丁'
        '<text:note><text:note-citation>1</text:note-citation><text:note-body><text:p>脚注</text:p></text:note-body>'
        '</text:note>，<text:a>链接</text:a><office:annotation><text:p>批注</text:p></office:annotation>。'
        '<draw:frame svg:y="1cm"><draw:text-box><text:p>文本框</text:p></draw:text-box></draw:frame></text:p>'
        '<text:list><text:list-item><text:p>一项</text:p></text:list-item>'
        '<text:list-item><text:list><text:list-item><text:p>子项</text:p></text:list-item></text:list>'
        '</text:list-item></text:list>'
        '<text:h text:outline-level="4">小节</text:h>'
        '<text:section><text:p>节内</text:p></text:section>'
    )
    document = open_document(_package(tmp_path / "markup.odt", body))
    assert "".join(document.blocks()) == "第一章 总则\n甲   乙\t丙\n丁，链接。\n文本框\n一项\n子项\n小节\n节内\n"
    assert [(h.level, h.title) for h in document.headings] == [(1, "第一章 总则")]


def test_opendocument_refusals(tmp_path: Path) -> None:
    assert {".odt", ".ods", ".odp"} <= set(SUPPORTED_SUFFIXES) and SUFFIX_FORMATS[".ods"] == frozenset({"ods"})
    data = (FIXTURES / "manual.odt").read_bytes()
    (tmp_path / "cut.odt").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.odt", "damaged")
    refused(_package(tmp_path / "bad.odt", "<text:p>未闭合"), "damaged OpenDocument text \\(content.xml: ")
    refused(_package(tmp_path / "empty.odt", "<text:p> </text:p>"), "has no text")
    locked = _package(tmp_path / "locked.odt", "<text:p>x</text:p>",
                      manifest=b'<manifest:manifest><manifest:encryption-data/></manifest:manifest>')
    refused(locked, "password-protected")
    cells = ('<table:table table:name="s"><table:table-row><table:table-cell office:value-type="string" '
             'table:number-columns-repeated="5000000"><text:p>x</text:p></table:table-cell></table:table-row>'
             '</table:table>')
    refused(_package(tmp_path / "wide.ods", cells, kind="spreadsheet"),
            r"wide.ods repeats a cell or row 5,000,000 times \(table:number-columns-repeated; limit 1,000,000\); "
            "refused as too large")
    refused(_package(tmp_path / "sheet.odt", "", tag="office:spreadsheet"),
            r"sheet.odt is a damaged OpenDocument text \(its content has no office:text\)")


def test_sheet_cells_repeat_only_where_they_hold_values(tmp_path: Path) -> None:
    """LibreOffice writes a sheet's empty tail as one cell or row repeated over a million times:
    read as nothing, while a repeated value is as many values (and counts toward the cell limit)."""
    rows = (
        '<table:table table:name="表一"><table:table-row><table:table-cell office:value-type="float" office:value="1"'
        ' table:number-columns-repeated="3"/><table:table-cell table:number-columns-repeated="16381"/>'
        '</table:table-row><table:table-row table:number-rows-repeated="1048575"><table:table-cell'
        ' table:number-columns-repeated="16384"/></table:table-row><table:table-row><table:table-cell'
        ' office:value-type="boolean" office:boolean-value="true"/><table:table-cell office:value-type="time"'
        ' office:time-value="PT09H30M00S"/><table:table-cell office:value-type="percentage" office:value="0.25"/>'
        '</table:table-row></table:table>'
    )
    document = open_document(_package(tmp_path / "tail.ods", rows, kind="spreadsheet"))
    assert "".join(document.blocks()) == "表一\n1 | 1 | 1\nTRUE | 09:30:00 | 0.25\n"


def _package(path: Path, body: str, *, kind: str = "text", manifest: bytes | None = None, tag: str | None = None) -> Path:
    """An OpenDocument package of ``kind`` (text, spreadsheet) whose body is ``body`` (in ``tag``,
    by default the kind's own)."""
    tag = tag or {"text": "office:text", "spreadsheet": "office:spreadsheet"}[kind]
    content = (f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {_NAMESPACES}>'
               f"<office:body><{tag}>{body}</{tag}></office:body></office:document-content>")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", _MIMETYPE.replace("text", kind), compress_type=zipfile.ZIP_STORED)
        archive.writestr("content.xml", content)
        if manifest is not None:
            archive.writestr("META-INF/manifest.xml", manifest)
    return path


def make_fixtures() -> None:
    """Write the sources and convert them with LibreOffice into tests/data/odf."""
    with tempfile.TemporaryDirectory() as folder:
        for name, write in SOURCES.items():
            stem, kind = name.rsplit(".", 1)
            source = write(Path(folder) / f"{stem}.{ {'odt': 'docx', 'odp': 'pptx', 'ods': 'xlsx'}[kind]}")
            libreoffice_convert([source], kind, FIXTURES)


if __name__ == "__main__":
    make_fixtures()
