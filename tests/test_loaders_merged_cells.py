"""Cells merged across columns in spreadsheets (XLSX, XLS, ODS): a title, section or total row under
a header is said as it is, not labelled with its first column's header (``姓名: 合计：两人`` before),
and a group-header row of merged cells above the real header does not take the header's place.

Differential: one sheet written in each format (openpyxl, xlwt, an ODS content.xml written here)
reads as the same lines."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from kb.loaders import open_document
from kb.loaders.rows import RowLines, Spanning

# (cells, merged across columns from the first cell to this column, or None)
ROWS: list[tuple[list[object], int | None]] = [
    (["2024 年员工名单"], 3),
    (["基本信息", None, "考核", None], None),  # two merged groups: A-B, C-D (below)
    (["姓名", "部门", "绩效", "备注"], None),
    (["张三", "销售部", 85, "优"], None),
    (["一、研发部"], 3),
    (["李四", "研发部", 90, None], None),
    (["合计：两人"], 3),
    (["王五", None, None, None], None),  # not merged: a row whose one value is the name
]
GROUPS = {1: [(0, 1), (2, 3)]}  # row -> merged column ranges in the group-header row
EXPECTED = """名单
2024 年员工名单
基本信息 | 考核
姓名 | 部门 | 绩效 | 备注
姓名: 张三；部门: 销售部；绩效: 85；备注: 优
一、研发部
姓名: 李四；部门: 研发部；绩效: 90
合计：两人
姓名: 王五
"""


def merges() -> list[tuple[int, int, int]]:
    """(row, first column, last column), 0-based, of every merge of ROWS."""
    out = [(r, 0, last) for r, (_, last) in enumerate(ROWS) if last is not None]
    out += [(r, a, b) for r, ranges in GROUPS.items() for a, b in ranges]
    return out


def write_xlsx(path: Path) -> Path:
    import openpyxl
    from openpyxl.utils import get_column_letter

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "名单"
    for cells, _ in ROWS:
        sheet.append(cells)
    for r, a, b in merges():
        sheet.merge_cells(f"{get_column_letter(a + 1)}{r + 1}:{get_column_letter(b + 1)}{r + 1}")
    book.save(path)
    return path


def write_xls(path: Path) -> Path:
    xlwt = pytest.importorskip("xlwt")
    book = xlwt.Workbook(encoding="utf-8")
    sheet = book.add_sheet("名单")
    merged = {(r, a): b for r, a, b in merges()}
    for r, (cells, _) in enumerate(ROWS):
        for c, value in enumerate(cells):
            if (r, c) in merged:
                sheet.write_merge(r, r, c, merged[(r, c)], value)
            elif value is not None:
                sheet.write(r, c, value)
    book.save(str(path))
    return path


def write_ods(path: Path) -> Path:
    """The sheet as LibreOffice writes merges: the first cell spans, covered cells follow it."""
    merged = {(r, a): b for r, a, b in merges()}
    rows = []
    for r, (cells, _) in enumerate(ROWS):
        xml, c = [], 0
        while c < len(cells):
            value, last = cells[c], merged.get((r, c), c)
            span = f' table:number-columns-spanned="{last - c + 1}"' if last > c else ""
            if isinstance(value, int):
                xml.append(f'<table:table-cell{span} office:value-type="float" office:value="{value}"/>')
            elif value is not None:
                xml.append(f'<table:table-cell{span} office:value-type="string"><text:p>{value}</text:p>'
                           "</table:table-cell>")
            else:
                xml.append("<table:table-cell/>")
            xml += ["<table:covered-table-cell/>"] * (last - c)
            c = last + 1
        rows.append("<table:table-row>" + "".join(xml) + "</table:table-row>")
    namespaces = ('xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
                  'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
                  'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"')
    content = (f'<?xml version="1.0" encoding="UTF-8"?><office:document-content {namespaces}><office:body>'
               f'<office:spreadsheet><table:table table:name="名单">{"".join(rows)}</table:table>'
               "</office:spreadsheet></office:body></office:document-content>")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet", compress_type=zipfile.ZIP_STORED)
        archive.writestr("content.xml", content)
    return path


@pytest.mark.parametrize("write", [write_xlsx, write_xls, write_ods], ids=["xlsx", "xls", "ods"])
def test_merged_rows_read_alike_in_every_spreadsheet_format(write, tmp_path: Path) -> None:  # noqa: ANN001
    """Regression: a 合计 line merged across the row read ``姓名: 合计：两人`` (labelled with its
    first column's header), and the merged group headers kept the real header from being one."""
    document = open_document(write(tmp_path / f"book.{write.__name__.removeprefix('write_')}"))
    assert "".join(document.blocks()) == EXPECTED


def test_row_lines_spanning_rules() -> None:
    """Unit rules: a row of spanning cells only is said as it is and decides nothing; a spanning
    cell beside other values is one of them; unmerged one-value rows stay labelled."""
    table = RowLines()
    assert table.line([Spanning("基本信息"), None, Spanning("考核")]) == "基本信息 | 考核"
    assert table.header is None
    assert table.line(["姓名", "部门", "金额"]) == "姓名 | 部门 | 金额"
    assert table.line([Spanning("合计"), None, 300]) == "姓名: 合计；金额: 300"
    assert table.line([Spanning("小计：一人")]) == "小计：一人"
    assert table.line(["赵六"]) == "姓名: 赵六"
