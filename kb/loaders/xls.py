"""Excel 97-2003 workbooks (.xls, BIFF in an OLE2 compound file) with xlrd (BSD): every sheet,
hidden ones too, as :mod:`kb.loaders.sheets` makes them, the same document an .xlsx of the same
cells gives.

Old enterprise systems and older Excel still write .xls. xlrd reads it without running anything
(no macros, no external links); cells come typed: dates (numbers under a date format) become
dates in the book's 1900/1904 date system, booleans TRUE/FALSE, error cells nothing. Sheets are
loaded one at a time (``on_demand``) and their rows are as long as their last cell
(``ragged_rows``), so a sheet's declared size is never padded out. An encrypted workbook is
refused in one line.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb.errors import DocumentLoadError
from kb.loaders.document import LoadedDocument
from kb.loaders.sheets import Sheet, across_columns, sheets_document, spanned


def load_xls(path: Path) -> LoadedDocument:
    """An .xls workbook's sheets as headings and their rows as lines."""
    import xlrd

    try:
        book = xlrd.open_workbook(file_contents=path.read_bytes(), on_demand=True, ragged_rows=True,
                                  formatting_info=True, logfile=io.StringIO())
    except xlrd.XLRDError as e:
        if "encrypted" in str(e).lower():
            raise DocumentLoadError(f"{path} is password-protected; save it without a password") from e
        raise DocumentLoadError(f"{path} is a damaged Excel 97-2003 workbook ({e}); save it again as .xlsx") from e
    except Exception as e:  # truncated records and friends
        raise DocumentLoadError(
            f"{path} is a damaged Excel 97-2003 workbook ({type(e).__name__}); save it again as .xlsx"
        ) from e
    try:
        return sheets_document(path, _sheets(book), format="xls")
    except DocumentLoadError:
        raise
    except Exception as e:  # a damaged sheet, found when it loads
        raise DocumentLoadError(
            f"{path} is a damaged Excel 97-2003 workbook ({type(e).__name__}: {e}); save it again as .xlsx"
        ) from e
    finally:
        book.release_resources()


def _sheets(book: Any) -> Iterator[Sheet]:
    """Each sheet's name and rows, loaded one at a time and unloaded after."""
    for index in range(book.nsheets):
        sheet = book.sheet_by_index(index)
        spans = across_columns((r, c) for r, _, c, end in sheet.merged_cells if end - c > 1)
        yield sheet.name, (spanned(_values(sheet.row(r), book.datemode), spans.get(r, ())) for r in range(sheet.nrows))
        book.unload_sheet(index)


def _values(cells: list[Any], datemode: int) -> list[object]:
    """A row's cells as Python values: dates as datetimes, booleans as bools, errors and blanks None."""
    import xlrd

    values: list[object] = []
    for cell in cells:
        kind, value = cell.ctype, cell.value
        if kind == xlrd.XL_CELL_DATE:
            try:
                value = xlrd.xldate.xldate_as_datetime(value, datemode)
            except (ValueError, OverflowError, xlrd.xldate.XLDateError):
                pass  # a number under a date format that is no date: the number
        elif kind == xlrd.XL_CELL_BOOLEAN:
            value = bool(value)
        elif kind in (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK, xlrd.XL_CELL_ERROR):
            value = None
        values.append(value)
    return values
