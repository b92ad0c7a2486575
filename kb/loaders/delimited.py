"""CSV/TSV exports as tables: each row one line (:mod:`kb.loaders.rows`: ``表头: 值；...`` under
a header row), read with the standard library's csv module.

Bytes cannot tell a table from prose, so this loader reads text files named ``.csv``/``.tsv``
(see :mod:`kb.loaders.sniff`). The encoding is detected as for every text file
(:func:`kb.loading.open_text_file`: UTF-8 with or without BOM, GBK/GB18030 from Chinese Excel,
Big5, UTF-16) and the file is streamed in blocks; the delimiter is sniffed from its start.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import LoadedDocument, text_blocks
from kb.loaders.rows import RowLines
from kb.loading import open_text_file, replaced_warning

# The delimiter is sniffed from the whole lines in this many characters at the start (csv.Sniffer's
# regular expressions take time quadratic in a line's length: the sample stays small).
SNIFF_CHARS = 8 << 10
_DELIMITERS = ",\t;|"
# The csv module refuses cells past 131,072 characters by default, and a CSV export of articles or
# contracts holds whole texts in one cell. Its limit is process-wide; it is raised once, here, to a
# size no real cell reaches (the file is read whole into memory anyway, as every loader's text).
MAX_CELL_CHARS = 1 << 26
csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_CHARS))


def load_delimited(path: Path) -> LoadedDocument:
    """A ``.csv``/``.tsv`` file's rows as lines (no headings, no pages)."""
    text_file = open_text_file(path)
    lines = _lines(text_file.blocks())
    head = list(_take_chars(lines, SNIFF_CHARS))
    delimiter = _delimiter("".join(head), fallback="\t" if path.suffix.lower() == ".tsv" else ",")
    rows = RowLines()
    parts: list[str] = []
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter)
    try:
        for record in reader:
            if line := rows.line(record):
                parts.append(line + "\n")
    except csv.Error as e:
        if "field limit" in str(e):
            raise DocumentLoadError(f"{path} has a cell longer than {csv.field_size_limit():,} characters (line "
                                    f"{reader.line_num}); save that text as its own .txt file") from e
        raise DocumentLoadError(f"{path} is not valid CSV (line {reader.line_num}: {e}); save it again as CSV") from e
    if not parts:
        raise DocumentLoadError(f"{path} has no values in any row; there is nothing to add")
    warnings = [replaced_warning(path.name, text_file.replaced)] if text_file.replaced else []
    return LoadedDocument(path, "csv", text_file.encoding, text_blocks(parts), warnings=warnings)


def _lines(blocks: Iterable[str]) -> Iterator[str]:
    """The text given in blocks as lines with their ends (``\\n``, ``\\r\\n`` or ``\\r``), as
    csv.reader wants them (a ``\\r\\n`` is never split between blocks)."""
    pending = ""
    for block in blocks:
        pending += block
        cut = pending.rfind("\n") + 1
        if cut:
            yield from io.StringIO(pending[:cut], newline="")
            pending = pending[cut:]
    if pending:
        yield from io.StringIO(pending, newline="")


def _take_chars(lines: Iterator[str], limit: int) -> Iterator[str]:
    """Lines from ``lines`` until they hold ``limit`` characters (the rest stays in ``lines``)."""
    size = 0
    for line in lines:
        yield line
        size += len(line)
        if size >= limit:
            return


def _delimiter(sample: str, *, fallback: str) -> str:
    """The delimiter csv.Sniffer finds in ``sample`` (one of ``,``, tab, ``;``, ``|``), else ``fallback``."""
    if len(sample) > SNIFF_CHARS:
        sample = sample[:SNIFF_CHARS]
        sample = sample[: sample.rfind("\n") + 1] or sample  # whole lines, where there are several
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return fallback
