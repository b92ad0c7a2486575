"""Workbooks as documents, whichever library reads them (XLSX: openpyxl, XLS: xlrd): every sheet
under a level-1 heading with its name, each row one line (:mod:`kb.loaders.rows`: ``表头: 值；...``
under a header row), and the cells counted as they come: a workbook past ``sniff.MAX_CELLS``
cells (empty cells inside a row and empty rows count, so a hostile row number or column cannot
stall the read) is refused."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders import sniff
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.rows import RowLines, Spanning

Sheet = tuple[str, Iterable[Sequence[object]]]  # (name, rows of cell values)


def sheets_document(path: Path, sheets: Iterable[Sheet], *, format: str) -> LoadedDocument:
    """The document of ``sheets`` read in order (a sheet without values adds nothing)."""
    parts: list[str] = []
    headings: list[Heading] = []
    length = cells = 0
    for name, rows in sheets:
        table = RowLines()
        title = " ".join(name.split())
        heading = Heading(length, 1, title)
        lines: list[str] = []
        for values in rows:
            cells += max(1, len(values))
            if cells > sniff.MAX_CELLS:
                raise DocumentLoadError(
                    f"{path} has more than {sniff.MAX_CELLS:,} cells (sheet {title!r}); refused as too large: "
                    "split the workbook"
                )
            if line := table.line(values):
                lines.append(line + "\n")
        if lines:
            headings.append(heading)
            parts.append(title + "\n")
            parts.extend(lines)
            length += len(title) + 1 + sum(map(len, lines))
    if not length:
        raise DocumentLoadError(f"{path} has no text in any sheet; there is nothing to add")
    return LoadedDocument(path, format, format, text_blocks(parts), headings=tuple(headings))


def across_columns(starts: Iterable[tuple[int, int]]) -> dict[int, set[int]]:
    """Row -> the columns where a cell merged across columns starts (0-based), from (row, column)."""
    spans: dict[int, set[int]] = {}
    for row, column in starts:
        spans.setdefault(row, set()).add(column)
    return spans


def spanned(values: Sequence[object], columns: Iterable[int]) -> Sequence[object]:
    """``values`` with the cells that start a merge across ``columns`` as ``rows.Spanning``."""
    columns = [c for c in columns if c < len(values) and values[c] is not None]
    if not columns:
        return values
    marked = list(values)
    for c in columns:
        marked[c] = Spanning(marked[c])
    return marked
