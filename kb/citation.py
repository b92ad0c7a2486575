"""How a chunk is cited, in one place for the UI, ``ingest query``, the API and the QA chain.

``manual.pdf · p.12 · 3.2 安装``: the file name, the page (PDF and images) and the innermost
heading; a novel's chapter keeps the document's own unit (``第2章 休假``, not ``第2回``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

SEPARATOR = " · "


def chapter_label(number: int | None, title: str | None, heading: str | None) -> str:
    """``第2章 休假`` for a chapter headed ``第二章 休假`` (the unit is the heading's own);
    a structural heading without a 第N unit is its title; an unnumbered section is its heading
    and title (``番外一 重逢``, ``后记``). Empty for the preamble."""
    if number is None:
        return "" if not heading else heading if not title or title == heading else f"{heading} {title}"
    if heading and heading.startswith("第"):
        label = f"第{number}{heading[-1]}"
        return label if not title or title == heading else f"{label} {title}"
    return title or ""


def chapter_unit(headings: Iterable[str | None]) -> str:
    """The unit the headings number chapters in (回, 章, 节, 卷…), the most common one; ""
    when none is a ``第N…`` heading. For labels of chapter numbers and ranges (``第40-60回``)."""
    units = Counter(h[-1] for h in (h.strip() for h in headings if h) if h.startswith("第") and len(h) > 1)
    return units.most_common(1)[0][0] if units else ""


def chapter_span_label(first: int, last: int, unit: str) -> str:
    """``第40-60回`` (``第5章`` for one chapter) in the documents' own unit; ``40-60`` without one."""
    span = str(first) if first == last else f"{first}-{last}"
    return f"第{span}{unit}" if unit else span


def page_label(page: int | None, page_end: int | None = None) -> str:
    """``p.12`` or ``p.12–13``; empty without a page."""
    if page is None:
        return ""
    return f"p.{page}" if page_end is None or page_end == page else f"p.{page}–{page_end}"


def section_label(section: str | None) -> str:
    """The innermost heading of a section path (``3.2 安装`` for ``第三章 > 3.2 安装``)."""
    return section.rsplit(" > ", 1)[-1].strip() if section else ""


def source_label(metadata: Mapping[str, Any]) -> str:
    """``manual.pdf · p.12 · 3.2 安装`` for a chunk's metadata (keys ``source``, ``page``,
    ``page_end``, ``section``; ``chapter``/``chapter_title`` where there is no section)."""
    name = PurePath(str(metadata.get("source") or "").replace("\\", "/")).name
    where = section_label(metadata.get("section"))
    if not where and metadata.get("chapter") is not None:
        # Chunks stored before sections existed know no unit: they came from 第N回 novels.
        title = metadata.get("chapter_title") or ""
        where = title if title.startswith("第") else f"第{metadata['chapter']}回 {title}".strip()
    parts = [name, page_label(metadata.get("page"), metadata.get("page_end")), where]
    return SEPARATOR.join(part for part in parts if part)
