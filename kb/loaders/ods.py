"""OpenDocument spreadsheets (.ods, .ots): every sheet, as :mod:`kb.loaders.sheets` makes them,
the same document an .xlsx of the same cells gives.

Cells come typed from their ``office:value-type``: numbers (also percentages and currency) from
``office:value``, dates and times from ``office:date-value`` / ``office:time-value``, booleans,
and text from the cell's paragraphs. A formula cell has its last computed value, as saved.
A cell merged across columns (``table:number-columns-spanned``) is a ``rows.Spanning`` value.
Repeated cells and rows (``table:number-columns-repeated``: LibreOffice writes a sheet's empty
tail as one cell repeated 1,000+ times) are expanded only where they hold a value, so a sheet's
declared size is never padded out; values repeated past the cell limit are refused.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import lxml.etree

from kb.loaders.document import LoadedDocument
from kb.loaders.opendocument import block_lines, body, named, q, repeat, table_rows
from kb.loaders.rows import Spanning
from kb.loaders.sheets import Sheet, sheets_document

_DURATION = re.compile(r"^-?PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$")


def load_ods(path: Path) -> LoadedDocument:
    """An .ods workbook's sheets as headings and their rows as lines."""
    with named(path):
        return sheets_document(path, _sheets(body(path, kind="ods")), format="ods")


def _sheets(spreadsheet: lxml.etree._Element) -> Iterator[Sheet]:
    for table in spreadsheet.iterchildren(q("table:table")):
        yield table.get(q("table:name"), ""), _rows(table)


def _rows(table: lxml.etree._Element) -> Iterator[list[object]]:
    """Each row's values; a repeated row once per repeat when it holds any value, else once."""
    for row in table_rows(table):
        values = _values(row)
        for _ in range(repeat(row, "table:number-rows-repeated") if values else 1):
            yield values


def _values(row: lxml.etree._Element) -> list[object]:
    """A row's cell values up to its last value (empty repeated cells expanded only between values)."""
    values: list[object] = []
    empty = 0
    for cell in row.iterchildren(q("table:table-cell"), q("table:covered-table-cell")):
        count = repeat(cell, "table:number-columns-repeated")
        value = cell_value(cell)
        if value is not None and repeat(cell, "table:number-columns-spanned") > 1:
            value = Spanning(value)
        if value is None:
            empty += count
            continue
        values.extend([None] * empty + [value] * count)
        empty = 0
    return values


def cell_value(cell: lxml.etree._Element) -> object:
    """A cell's typed value (None for an empty or covered cell)."""
    kind = cell.get(q("office:value-type"))
    try:
        if kind in ("float", "percentage", "currency"):
            return float(cell.get(q("office:value"), ""))
        if kind == "date":
            text = cell.get(q("office:date-value"), "")
            return datetime.datetime.fromisoformat(text) if "T" in text else datetime.date.fromisoformat(text)
        if kind == "time":
            return _time(cell.get(q("office:time-value"), ""))
        if kind == "boolean":
            return cell.get(q("office:boolean-value")) == "true"
    except ValueError:
        pass  # a malformed typed value: read what the cell shows instead
    text = "\n".join(line for line, _ in block_lines(cell))
    return text if text.strip() else None


def _time(text: str) -> datetime.time | str:
    """``PT09H30M00S`` as a time of day (a duration past 24 hours stays as written)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    hours, minutes, seconds = (float(group or 0) for group in match.groups())
    if hours >= 24 or text.startswith("-"):
        return text
    return datetime.time(int(hours), int(minutes), int(seconds))
