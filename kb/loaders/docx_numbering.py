"""Word's automatic list and heading numbering (DOCX), rendered as the label Word shows before a paragraph.

An automatic number ("第一章", "1.2", "（一）", "①") is not in a paragraph's text: the paragraph (or a
style in its ``w:basedOn`` chain, e.g. "Heading 1" linked to a multilevel list) names a numbering
instance and a level, ``w:numPr/w:numId`` + ``w:ilvl``, and ``word/numbering.xml`` says how that level
counts and looks. Without it a manual's "1.1 安装" reads as "安装" and a "第%1章" heading list gives no
chapters. The model, as Word has it:

- ``w:abstractNum``: up to nine levels (``w:lvl``), each with a start value (``w:start``), a number
  format (``w:numFmt``: decimal, chineseCounting, upperRoman, bullet, ...), a label template
  (``w:lvlText``: "第%1章", "%1.%2", "（%1）", where %N is level N's current number), legal numbering
  (``w:isLgl``: every number in the label decimal), when it restarts (``w:lvlRestart``) and what
  follows the label (``w:suff``: a tab, a space or nothing). ``w:numStyleLink`` takes the levels of
  the abstract numbering that defines a numbering style (``w:styleLink``).
- ``w:num``: an instance that the paragraphs name by ``w:numId`` (0 means no numbering), pointing at
  an abstract numbering, with per-level overrides: ``w:startOverride`` restarts a level, and a
  ``w:lvl`` inside ``w:lvlOverride`` replaces its look.
- Counters: one set per abstract numbering, shared by every instance of it (Word continues a list
  across instances of one abstract numbering unless an instance restarts it with a startOverride);
  a paragraph advances its level's counter and resets the deeper levels that restart after it.

Simplifications: an instance's startOverride applies at the first paragraph of that instance on
that level (Word's usual "restart numbering" list); a number Word would draw with a picture or a
symbol font (bullets) is written "•"; formats not known here count in decimal; hidden or deleted
paragraphs count like any other. Nothing here raises on a damaged part: unknown values fall back to
decimal or to no label, and ``without_broken_numbering`` swaps an unparsable numbering.xml for an
empty one so that python-docx can open the rest of the document.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field

import lxml.etree

from kb.loaders.number_formats import format_number
from kb.loaders.word_text import MC, W

_CONTENT_TYPES = "http://schemas.openxmlformats.org/package/2006/content-types"
NUMBERING_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.numbering+xml"
_EMPTY_NUMBERING = f'<w:numbering xmlns:w="{W}"/>'.encode()
_LEVELS = 9  # Word's levels 0..8, %1..%9 in a label
_MAX_START = 32767  # Word's own limit on w:start; a hostile value cannot make a huge label
_MAX_STYLE_DEPTH = 16  # basedOn chains and style links may loop in a hostile file
_PLACEHOLDER = re.compile(r"%([1-9])")
_BULLET = "•"
_Element = lxml.etree._Element


def _w(name: str) -> str:
    return f"{{{W}}}{name}"


def _val(element: _Element | None, child: str) -> str | None:
    """The ``w:val`` of ``element``'s ``w:child``, None where either is missing."""
    found = element.find(_w(child)) if element is not None else None
    return found.get(_w("val")) if found is not None else None


def _int(value: str | None, low: int = 0, high: int = _MAX_START) -> int | None:
    """``value`` as an int within [low, high], None where it is missing or not a number."""
    try:
        number = int(value or "")
    except ValueError:
        return None
    return min(max(number, low), high)


def _flag(value: str | None) -> bool:
    """A Word on/off attribute value: "1", "true" or "on"."""
    return (value or "").strip().lower() in ("1", "true", "on")


def _on(element: _Element | None) -> bool:
    """A Word on/off property element: present and not ``w:val="0"/"false"/"off"``."""
    return element is not None and _flag(element.get(_w("val"), "true"))


# --- definitions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One level of a list: how it counts and how its label looks."""

    start: int = 1
    fmt: str = "decimal"
    text: str = ""  # w:lvlText, "%1." ("" where absent: Word shows no number)
    legal: bool = False  # w:isLgl
    restart: int | None = None  # w:lvlRestart: None after any shallower level, 0 never, N after level N
    suffix: str = " "  # after the label: " " for a tab or a space, "" for nothing
    style: str | None = None  # w:pStyle: the paragraph style that this level numbers
    width: int = 0  # zero-padding of a "custom" 001, 002, ... format


@dataclass
class _Instance:
    """A ``w:num``: its abstract numbering's key and its per-level overrides."""

    abstract: str
    levels: dict[int, Level]  # the abstract levels with this instance's lvlOverride/w:lvl applied
    starts: dict[int, int] = field(default_factory=dict)  # lvlOverride/w:startOverride


def _number_format(lvl: _Element, base: Level) -> tuple[str, int]:
    """A level's number format and zero-padding width. Word 2010+ writes a custom format ("001,
    002, 003, ...") inside mc:AlternateContent, with a plain format as the fallback."""
    fmt = lvl.find(_w("numFmt"))
    if fmt is None:
        fmt = lvl.find(f"{{{MC}}}AlternateContent/{{{MC}}}Choice/{_w('numFmt')}")
    if fmt is None:
        return base.fmt, base.width
    value = fmt.get(_w("val")) or "decimal"
    if value == "custom":
        first = (fmt.get(_w("format")) or "").split(",")[0].strip()
        if first.isascii() and first.isdigit():
            return "decimal", len(first)
        fallback = lvl.find(f"{{{MC}}}AlternateContent/{{{MC}}}Fallback/{_w('numFmt')}")
        return (fallback.get(_w("val")) or "decimal") if fallback is not None else "decimal", 0
    return value, 0


def _level(lvl: _Element, base: Level = Level()) -> Level:
    """A ``w:lvl`` read over ``base`` (an override keeps what it does not say)."""
    fmt, width = _number_format(lvl, base)
    text, legal, restart = (lvl.find(_w(name)) for name in ("lvlText", "isLgl", "lvlRestart"))
    suffix = _val(lvl, "suff")
    start = _int(_val(lvl, "start"))
    return Level(
        start=base.start if start is None else start,
        fmt=fmt,
        width=width,
        text=base.text if text is None else text.get(_w("val")) or "",
        legal=base.legal if legal is None else _on(legal),
        restart=base.restart if restart is None else _int(restart.get(_w("val")), 0, _LEVELS),
        suffix=base.suffix if suffix is None else ("" if suffix == "nothing" else " "),
        style=_val(lvl, "pStyle") or base.style,
    )


def _levels(abstract: _Element) -> dict[int, Level]:
    """An ``w:abstractNum``'s levels by ``w:ilvl``."""
    levels: dict[int, Level] = {}
    for lvl in abstract.iterchildren(_w("lvl")):
        ilvl = _int(lvl.get(_w("ilvl")), 0, _LEVELS - 1)
        if ilvl is not None and ilvl not in levels:
            levels[ilvl] = _level(lvl)
    return levels


@dataclass(frozen=True)
class _Style:
    """What numbering a paragraph style says (``w:pPr/w:numPr``), and the style it is based on."""

    num_id: str | None
    ilvl: int | None
    based_on: str | None


def _num_pr(properties: _Element | None) -> tuple[str | None, int | None]:
    """A ``w:pPr``'s ``w:numPr``: its numId and its ilvl, each None where not given."""
    num_pr = properties.find(_w("numPr")) if properties is not None else None
    if num_pr is None:
        return None, None
    num_id = _val(num_pr, "numId")
    return (num_id.strip() if num_id is not None else None), _int(_val(num_pr, "ilvl"), 0, _LEVELS - 1)


def _styles(styles: _Element | None) -> tuple[dict[str, _Style], str | None]:
    """Every style's numbering and base by style id, and the default paragraph style's id."""
    found: dict[str, _Style] = {}
    default = None
    for style in styles.iterchildren(_w("style")) if styles is not None else ():
        style_id = style.get(_w("styleId"))
        if not style_id or style_id in found:
            continue
        num_id, ilvl = _num_pr(style.find(_w("pPr")))
        found[style_id] = _Style(num_id, ilvl, _val(style, "basedOn"))
        if default is None and style.get(_w("type")) == "paragraph" and _flag(style.get(_w("default"))):
            default = style_id
    return found, default


# --- counting -----------------------------------------------------------------------------------


class Numbering:
    """The numbering definitions of one document, and the counters as its paragraphs are read in
    order: :meth:`label` gives each paragraph's label (and advances the counters)."""

    def __init__(self, numbering: _Element | None, styles: _Element | None) -> None:
        self._styles, self._default_style = _styles(styles)
        self._instances = _instances(numbering, self._styles)
        self._counters: dict[str, list[int | None]] = {}
        self._started: set[tuple[str, int]] = set()  # (numId, level) whose startOverride was applied

    @classmethod
    def of_document(cls, document: object) -> Numbering:
        """The numbering of a python-docx document; none where its parts are missing or odd."""
        from docx.opc.constants import RELATIONSHIP_TYPE as RT

        try:
            part = document.part.part_related_by(RT.NUMBERING)  # type: ignore[attr-defined]
            numbering = part.element if hasattr(part, "element") else None
        except Exception:  # no numbering part, or one python-docx did not read as XML
            numbering = None
        try:
            styles = document.styles.element  # type: ignore[attr-defined]
        except Exception:
            styles = None
        return cls(numbering, styles)

    def label(self, p: _Element) -> str:
        """The label Word shows before ``w:p`` ``p`` with what follows it ("第一章 ", "1.2 ", "• "),
        "" where it is not numbered. Call it for every paragraph in document order: it counts."""
        found = self._numbering_of(p)
        if found is None:
            return ""
        num_id, ilvl = found
        instance = self._instances[num_id]
        level = instance.levels.get(ilvl)
        if level is None:
            return ""
        counters = self._advance(num_id, instance, ilvl)
        label = _render(level, instance.levels, counters)
        return label + level.suffix if label.strip() else ""

    def _numbering_of(self, p: _Element) -> tuple[str, int] | None:
        """(numId, level) of a paragraph: its own ``w:numPr``, else what its style chain says
        (numId and ilvl each from the first that gives it); None where unnumbered or numId 0."""
        properties = p.find(_w("pPr"))
        num_id, ilvl = _num_pr(properties)
        style_id = _val(properties, "pStyle") or self._default_style
        numbered_style = None
        seen: set[str] = set()
        current = style_id
        while current and current not in seen and len(seen) < _MAX_STYLE_DEPTH and (num_id is None or ilvl is None):
            seen.add(current)
            style = self._styles.get(current)
            if style is None:
                break
            if num_id is None and style.num_id is not None:
                num_id, numbered_style = style.num_id, current
            if ilvl is None:
                ilvl = style.ilvl
            current = style.based_on
        if num_id is None or num_id == "0" or num_id not in self._instances:
            return None
        if ilvl is None:  # a style linked to a level by that level's w:pStyle ("Heading 2" -> level 1)
            levels = self._instances[num_id].levels
            wanted = {s for s in (numbered_style, style_id) if s}
            ilvl = next((i for i, level in sorted(levels.items()) if level.style in wanted), 0)
        return num_id, ilvl

    def _advance(self, num_id: str, instance: _Instance, ilvl: int) -> list[int | None]:
        """Count a paragraph on ``ilvl``: restart it where its instance's startOverride says so
        (once), else add one, and reset the deeper levels that restart after it."""
        counters = self._counters.setdefault(instance.abstract, [None] * _LEVELS)
        if ilvl in instance.starts and (num_id, ilvl) not in self._started:
            self._started.add((num_id, ilvl))
            counters[ilvl] = instance.starts[ilvl]
        elif counters[ilvl] is None:
            counters[ilvl] = instance.levels[ilvl].start
        else:
            counters[ilvl] = min((counters[ilvl] or 0) + 1, 10**9)
        for deeper in range(ilvl + 1, _LEVELS):
            level = instance.levels.get(deeper)
            restart = deeper if level is None or level.restart is None else level.restart
            if ilvl < restart:  # lvlRestart N: after level N (1-based), i.e. ilvl < N; 0: never
                counters[deeper] = None
        return counters


def _instances(numbering: _Element | None, styles: dict[str, _Style]) -> dict[str, _Instance]:
    """Every ``w:num`` by numId, its abstract numbering resolved (through a numStyleLink too)."""
    if numbering is None:
        return {}
    abstracts = {a.get(_w("abstractNumId")): a for a in numbering.iterchildren(_w("abstractNum"))}
    nums = {n.get(_w("numId")): n for n in numbering.iterchildren(_w("num"))}
    instances: dict[str, _Instance] = {}
    for num_id, num in nums.items():
        if not num_id:
            continue
        key = _resolved(_val(num, "abstractNumId"), abstracts, nums, styles)
        if key is None:
            continue
        levels = _levels(abstracts[key])
        starts: dict[int, int] = {}
        for override in num.iterchildren(_w("lvlOverride")):
            ilvl = _int(override.get(_w("ilvl")), 0, _LEVELS - 1)
            if ilvl is None:
                continue
            start = _int(_val(override, "startOverride"))
            if start is not None:
                starts[ilvl] = start
            lvl = override.find(_w("lvl"))
            if lvl is not None:
                levels[ilvl] = _level(lvl, levels.get(ilvl, Level()))
        instances[num_id.strip()] = _Instance(key, levels, starts)
    return instances


def _resolved(
    key: str | None, abstracts: dict[str | None, _Element], nums: dict[str | None, _Element], styles: dict[str, _Style]
) -> str | None:
    """The abstract numbering whose levels ``key`` uses: itself, or where it links to a numbering
    style (``w:numStyleLink``), the one that defines that style (``w:styleLink``, else the style's
    own numId); None where it is missing."""
    for _ in range(_MAX_STYLE_DEPTH):
        abstract = abstracts.get(key) if key is not None else None
        if abstract is None:
            return None
        link = _val(abstract, "numStyleLink")
        if not link:
            return key
        defining = next((k for k, a in abstracts.items() if _val(a, "styleLink") == link and k != key), None)
        if defining is None:
            style = styles.get(link)
            num = nums.get(style.num_id) if style is not None else None
            defining = _val(num, "abstractNumId") if num is not None else None
        if defining is None or defining == key:
            return key
        key = defining
    return key


def _render(level: Level, levels: dict[int, Level], counters: list[int | None]) -> str:
    """A level's label: its lvlText with each %N replaced by level N's number in level N's format
    (decimal throughout for legal numbering); "•" for a bullet whatever glyph the file names."""
    if level.fmt == "bullet":
        return _BULLET

    def number(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 1
        other = levels.get(index, Level())
        value = counters[index]
        value = other.start if value is None else value  # a level not reached yet shows its start
        if level.legal and other.fmt != "none":
            return str(value)
        text = "•" if other.fmt == "bullet" else format_number(value, other.fmt)
        return text.zfill(other.width) if other.width else text

    text = _PLACEHOLDER.sub(number, level.text)
    # Symbol/Wingdings glyphs live in the private use area: no letter in any other font.
    return "".join(c for c in text if not 0xE000 <= ord(c) <= 0xF8FF).strip()


# --- a damaged part -----------------------------------------------------------------------------


def without_broken_numbering(archive: zipfile.ZipFile) -> io.BytesIO | None:
    """A copy of a .docx in memory with its numbering part emptied, where that part is not
    well-formed XML (python-docx would refuse the whole document for it); None where it is fine."""
    name = _numbering_member(archive)
    if name is None:
        return None
    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        lxml.etree.fromstring(archive.read(name), parser=parser)
        return None
    except (lxml.etree.XMLSyntaxError, ValueError):
        pass
    copy = io.BytesIO()
    with zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            out.writestr(info, _EMPTY_NUMBERING if info.filename == name else archive.read(info))
    copy.seek(0)
    return copy


def _numbering_member(archive: zipfile.ZipFile) -> str | None:
    """The zip member name of the numbering part ([Content_Types].xml's override), if any."""
    try:
        types = lxml.etree.fromstring(
            archive.read("[Content_Types].xml"), parser=lxml.etree.XMLParser(resolve_entities=False, no_network=True)
        )
    except (KeyError, lxml.etree.XMLSyntaxError, ValueError):
        return None  # python-docx refuses the document itself then
    names = set(archive.namelist())
    for override in types.iterchildren(f"{{{_CONTENT_TYPES}}}Override"):
        if override.get("ContentType") == NUMBERING_CONTENT_TYPE:
            name = (override.get("PartName") or "").lstrip("/")
            if name in names:
                return name
    return None
