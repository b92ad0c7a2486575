"""Excel 97-2003 (.xls): the same document as an .xlsx of the same cells (a differential test
against the XLSX loader), recognised by content among OLE2 files, limits and damage refused in
one line. The workbooks are written here with xlwt (and openpyxl for the .xlsx twin)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from kb.loaders import SUFFIX_FORMATS, SUPPORTED_SUFFIXES, detect_format, open_document
from tests.helpers import ingest_hits
from tests.test_loaders_hostile import refused

xlwt = pytest.importorskip("xlwt")

SHEETS: dict[str, list[list[object]]] = {
    "员工名单": [
        ["2024 年员工名单"],  # a one-cell title row above the header
        ["姓名", "部门", "入职日期", "工号", "在职", "绩效"],
        ["张三", "销售部", datetime.date(2021, 3, 1), 1001, True, 0.85],
        ["李四", "研发部", datetime.datetime(2019, 7, 15, 9, 30), 1002, False, None],
        ["王五", None, None, 1003, True, 1.5],
    ],
    "空表": [],
    "季度数据": [  # no header: numbers in the first row
        [2023, 1200, 1350.5],
        [2024, 1400, 1502.25],
    ],
}


def write_xls(path: Path) -> Path:
    book = xlwt.Workbook(encoding="utf-8")
    date_style = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    time_style = xlwt.easyxf(num_format_str="YYYY-MM-DD HH:MM")
    for name, rows in SHEETS.items():
        sheet = book.add_sheet(name)
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                if isinstance(value, datetime.datetime):
                    sheet.write(r, c, value, time_style)
                elif isinstance(value, datetime.date):
                    sheet.write(r, c, value, date_style)
                elif value is not None:
                    sheet.write(r, c, value)
    book.save(str(path))
    return path


def write_xlsx(path: Path) -> Path:
    import openpyxl

    book = openpyxl.Workbook()
    book.remove(book.active)
    for name, rows in SHEETS.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def test_an_xls_reads_as_the_xlsx_of_the_same_cells(tmp_path: Path) -> None:
    old, new = open_document(write_xls(tmp_path / "staff.xls")), open_document(write_xlsx(tmp_path / "staff.xlsx"))
    assert (old.format, new.format) == ("xls", "xlsx")
    text = "".join(old.blocks())
    assert text == "".join(new.blocks())
    assert [(h.start, h.title) for h in old.headings] == [(h.start, h.title) for h in new.headings]
    assert "姓名: 张三；部门: 销售部；入职日期: 2021-03-01；工号: 1001；在职: TRUE；绩效: 0.85" in text
    assert "入职日期: 2019-07-15 09:30:00" in text and "2023 | 1200 | 1350.5" in text
    assert [h.title for h in old.headings] == ["员工名单", "季度数据"]  # the empty sheet adds nothing


def test_xls_is_told_by_content_and_accepted_for_upload(tmp_path: Path) -> None:
    from app.web.manage import check_content

    book = write_xls(tmp_path / "staff.xls")
    (tmp_path / "export.dat").write_bytes(book.read_bytes())  # the bytes decide
    assert detect_format(tmp_path / "export.dat") == "xls"
    assert ".xls" in SUPPORTED_SUFFIXES and SUFFIX_FORMATS[".xls"] == frozenset({"xls"})
    assert check_content(book) == book


def test_other_ole2_files_are_refused_as_legacy_office(tmp_path: Path) -> None:
    """An OLE2 file that is neither a workbook, a Word document nor a PowerPoint deck (Visio,
    Outlook's .msg: other stream names) is refused as before, with what to do."""
    data = write_xls(tmp_path / "staff.xls").read_bytes()
    name = "Workbook".encode("utf-16-le")
    assert name in data
    (tmp_path / "drawing.vsd").write_bytes(data.replace(name, "Wordbook".encode("utf-16-le")))
    message = refused(tmp_path / "drawing.vsd", "an Office 97-2003 file that is not a Word, Excel or PowerPoint")
    assert ".docx" in message and "\n" not in message


def test_xls_limits_and_damage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xlrd

    from kb.loaders import sniff

    book = write_xls(tmp_path / "staff.xls")
    monkeypatch.setattr(sniff, "MAX_CELLS", 12)
    refused(book, "more than 12 cells \\(sheet '员工名单'\\)")
    monkeypatch.undo()
    data = book.read_bytes()
    (tmp_path / "cut.xls").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.xls", "(damaged Excel 97-2003 workbook|Office 97-2003 file)")

    def encrypted(*args: object, **kwargs: object) -> None:
        raise xlrd.XLRDError("Workbook is encrypted")

    monkeypatch.setattr(xlrd, "open_workbook", encrypted)
    refused(book, "password-protected; save it without a password")


def test_ingest_build_cites_xls_sheet_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hits = ingest_hits([write_xls(tmp_path / "staff.xls")], "王五 工号", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "王五" in h["text"])
    assert hit["section"] == "员工名单" and "工号: 1003" in hit["text"]
