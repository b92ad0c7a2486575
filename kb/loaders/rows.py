"""Table rows (XLSX sheets, CSV/TSV files) as lines that a retriever and a reader both follow.

Under a header row every value says what it is (``姓名: 张三；部门: 销售部``), so a chunk cut
from the middle of a long sheet still makes sense; without one the cells are joined with
`` | ``. The first row with two or more cells decides: it is a header when all its cells
are labels (non-empty text, not numbers or dates); one-cell rows above it (a sheet's
title) are kept as they are.

A cell merged across columns (``Spanning``, where the format says so: XLSX, XLS, ODS) is a
title, a section or a total line, not one column's value: a row whose only value spans is said as
it is under a header too (``合计：两人``, not ``姓名: 合计：两人``), and a row of spanning cells
only (a group header above the real one, ``基本信息 | 成绩``) does not decide the header.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Text that is a value, not a label: numbers, dates, times, percentages, phone numbers.
_VALUE_LIKE = re.compile(r"^[\d\s.,:/+\-%]*$")


@dataclass(frozen=True)
class Spanning:
    """A cell's value where the cell is merged across two or more columns of its row."""

    value: object


def cell_text(value: object) -> str:
    """A cell's value on one line: integral floats without ``.0``, dates as ISO dates."""
    if isinstance(value, Spanning):
        value = value.value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else format(value, ".15g")
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time():
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return " ".join(str(value).split())


class RowLines:
    """Turns the rows of one table, in order, into lines (see the module docstring)."""

    def __init__(self) -> None:
        self.header: list[str] | None = None
        self._decided = False

    def line(self, values: Sequence[object]) -> str:
        """The line for one row; ``""`` for a row without any value."""
        cells = [cell_text(value) for value in values]
        filled = [cell for cell in cells if cell]
        if not filled:
            return ""
        if all(isinstance(value, Spanning) for value, cell in zip(values, cells, strict=True) if cell):
            return " | ".join(filled)  # a title, section, total or group-header row: no column's value
        if not self._decided and len(filled) > 1:
            self._decided = True
            if _is_header(values, cells):
                self.header = cells
                return " | ".join(filled)
        if self.header is None:
            return " | ".join(filled)
        header = self.header
        return "；".join(
            f"{header[i]}: {cell}" if i < len(header) and header[i] else cell for i, cell in enumerate(cells) if cell
        )


def _is_header(values: Sequence[object], cells: list[str]) -> bool:
    """Every cell from the first to the last non-empty one is a label."""
    used = [i for i, cell in enumerate(cells) if cell]
    span = range(used[0], used[-1] + 1)
    return all(isinstance(values[i], str) and cells[i] and not _VALUE_LIKE.match(cells[i]) for i in span)
