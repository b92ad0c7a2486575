"""Excel workbooks (.xlsx) with openpyxl (MIT): every worksheet, hidden ones too, as
:mod:`kb.loaders.sheets` makes them (a heading per sheet, a line per row, cells counted).

The workbook is opened ``read_only`` (rows stream from the XML, memory stays bounded) and
``data_only`` (a formula gives the value Excel saved with it, none where it saved none, never
``=SUM(...)``). The archive is checked against zip bombs first.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb.errors import DocumentLoadError
from kb.loaders import sniff
from kb.loaders.document import LoadedDocument
from kb.loaders.sheets import sheets_document

# openpyxl's "no default style" and "extension is not supported": noise for a reader. Set once for
# the process: ``warnings.catch_warnings`` around each load would swap the global filter list
# under other threads (two uploads read at once).
warnings.filterwarnings("ignore", category=UserWarning, module="openpyxl")


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


def _rows(sheet: Any) -> Iterator[tuple[object, ...]]:
    """A read-only sheet's rows of values, its declared size ignored (never trusted, nor padded to)."""
    sheet.reset_dimensions()
    yield from sheet.iter_rows(values_only=True)


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())
