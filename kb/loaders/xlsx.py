"""Excel workbooks (.xlsx) with openpyxl (MIT): every worksheet, hidden ones too, as
:mod:`kb.loaders.sheets` makes them (a heading per sheet, a line per row, cells counted).

The workbook is opened ``read_only`` (rows stream from the XML, memory stays bounded) and
``data_only`` (a formula gives the value Excel saved with it, none where it saved none, never
``=SUM(...)``). The archive is checked against zip bombs first. Read-only sheets do not say
which cells are merged, so each sheet's ``mergeCell`` ranges are read from its XML in a streaming
pass (entities and the network off): a cell merged across columns is a ``rows.Spanning`` value.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lxml.etree

from kb.errors import DocumentLoadError
from kb.loaders import sniff
from kb.loaders.document import LoadedDocument
from kb.loaders.sheets import across_columns, sheets_document, spanned

# openpyxl's "no default style" and "extension is not supported": noise for a reader. Set once for
# the process: ``warnings.catch_warnings`` around each load would swap the global filter list
# under other threads (two uploads read at once).
warnings.filterwarnings("ignore", category=UserWarning, module="openpyxl")
MERGE_CELL = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}mergeCell"


def load_xlsx(path: Path) -> LoadedDocument:
    """An .xlsx workbook's sheets as headings and their rows as lines (``sheets_document``)."""
    import openpyxl

    try:
        with zipfile.ZipFile(path) as archive:
            sniff.check_archive(archive, name=str(path))
        # A file object, not a name: openpyxl refuses names without an Excel suffix.
        with path.open("rb") as stream:
            workbook = openpyxl.load_workbook(stream, read_only=True, data_only=True)
            try:
                return sheets_document(path, ((sheet.title, _rows(sheet)) for sheet in workbook.worksheets),
                                       format="xlsx")
            finally:
                workbook.close()
    except DocumentLoadError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise DocumentLoadError(f"{path} is a damaged Excel workbook ({_reason(e)}); save it again as .xlsx") from e
    except Exception as e:  # XML syntax errors and friends from a malformed part
        raise DocumentLoadError(
            f"{path} is a damaged Excel workbook ({type(e).__name__}: {_reason(e)}); save it again as .xlsx"
        ) from e


def _rows(sheet: Any) -> Iterator[Sequence[object]]:
    """A read-only sheet's rows of values, its declared size ignored (never trusted, nor padded to)."""
    spans = across_columns(_merged_across(sheet))
    sheet.reset_dimensions()
    for row, values in enumerate(sheet.iter_rows(values_only=True)):
        yield spanned(values, spans.get(row, ()))


def _merged_across(sheet: Any) -> Iterator[tuple[int, int]]:
    """(row, column), 0-based, of the first cell of each range the sheet merges across columns."""
    from openpyxl.utils.cell import range_boundaries

    with sheet._get_source() as source:  # openpyxl's own handle on the sheet's XML part
        for _, element in lxml.etree.iterparse(source, tag=MERGE_CELL, resolve_entities=False, no_network=True,
                                               load_dtd=False, huge_tree=False):
            try:
                first_column, first_row, last_column, _ = range_boundaries(element.get("ref", ""))
            except (ValueError, TypeError):
                continue  # a malformed range merges nothing
            if first_row and first_column and last_column and last_column > first_column:
                yield first_row - 1, first_column - 1
            element.clear()


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())
