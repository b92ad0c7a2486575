"""Chapters named inside a question ("第三回讲了什么？", "第3至5回"): what ``kb.search`` narrows to.

The numerals and units are the chapter headings' own (``kb.splitting``), so a question finds the
chapters a build numbered.
"""

from __future__ import annotations

import re

from kb.splitting import _SPACE, CHAPTER_UNITS, CN_NUMERAL_CHARS, VOLUME_UNIT, chinese_number

# A chapter (or a range) named inside a question: "第三回讲了什么", "第3到5回里曹操做了什么", "第十二章".
# What search narrows to (``kb.search``); 卷 is left out: volumes restart their chapters' numbers.
_NUMERAL = rf"[0-9０-９]+|[{CN_NUMERAL_CHARS}]+"
_UNITS = CHAPTER_UNITS.replace(VOLUME_UNIT, "")
CHAPTER_REFERENCE = re.compile(
    rf"第{_SPACE}*(?P<first>{_NUMERAL}){_SPACE}*"
    rf"(?:(?:[{_UNITS}]{_SPACE}*)?[-~～—–－至到]{_SPACE}*第?{_SPACE}*(?P<last>{_NUMERAL}){_SPACE}*)?"
    rf"(?P<unit>[{_UNITS}])"
)


def chapters_named(text: str) -> tuple[int, int] | None:
    """The chapters a question names, ``(first, last)`` inclusive: ``第三回`` -> (3, 3), ``第3至5回`` ->
    (3, 5); None where it names none, or several apart ("第三回和第五回": no one range to narrow to)."""
    ranges = set()
    for match in CHAPTER_REFERENCE.finditer(text):
        first = chinese_number(match.group("first"))
        last = chinese_number(match.group("last") or match.group("first"))
        ranges.add((first, last) if first <= last else (last, first))
    return ranges.pop() if len(ranges) == 1 else None
