"""Excel workbooks (.xlsx) with openpyxl (MIT): every worksheet, hidden ones too, under a level-1
heading with its name; each row one line (:mod:`kb.loaders.rows`: ``表头: 值；...`` under a
header row).

The workbook is opened ``read_only`` (rows stream from the XML, memory stays bounded) and
``data_only`` (a formula gives the value Excel saved with it, none where it saved none, never
``=SUM(...)``). The archive is checked against zip bombs first, and the rows are counted as
they come: a workbook past ``MAX_CELLS`` cells (empty cells inside a row and empty rows
count, so a hostile row number or column cannot stall the read) is refused.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders import sniff
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.rows import RowLines

# openpyxl's "no default style" and "extension is not supported": noise for a reader. Set once for
# the process: ``warnings.catch_warnings`` around each load would swap the global filter list
# under other threads (two uploads read at once).
warnings.filterwarnings("ignore", category=UserWarning, module="openpyxl")


def load_xlsx(path: Path) -> LoadedDocument:
    """An .xlsx workbook's sheets as headings and their rows as lines."""
    import openpyxl

    parts: list[str] = []
    headings: list[Heading] = []
    length = cells = 0
    try:
        with zipfile.ZipFile(path) as archive:
            sniff.check_archive(archive, name=str(path))
        # A file object, not a name: openpyxl refuses names without an Excel suffix.
        with path.open("rb") as stream:
            workbook = openpyxl.load_workbook(stream, read_only=True, data_only=True)
            try:
                for sheet in workbook.worksheets:
                    sheet.reset_dimensions()  # never trust (nor pad rows to) the declared size
                    rows = RowLines()
                    title = " ".join(sheet.title.split())
                    heading = Heading(length, 1, title)
                    lines: list[str] = []
                    for values in sheet.iter_rows(values_only=True):
                        cells += max(1, len(values))
                        if cells > sniff.MAX_CELLS:
                            raise DocumentLoadError(
                                f"{path} has more than {sniff.MAX_CELLS:,} cells (sheet {title!r}); "
                                "refused as too large: split the workbook"
                            )
                        if line := rows.line(values):
                            lines.append(line + "\n")
                    if lines:
                        headings.append(heading)
                        parts.append(title + "\n")
                        parts.extend(lines)
                        length += len(title) + 1 + sum(map(len, lines))
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
    if not length:
        raise DocumentLoadError(f"{path} has no text in any sheet; there is nothing to add")
    return LoadedDocument(path, "xlsx", "xlsx", text_blocks(parts), headings=tuple(headings))


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())
