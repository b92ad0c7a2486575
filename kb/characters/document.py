"""One document's share of the character graph, computed from its text alone.

Everything here is per document and per raw name (aliases are resolved later, across the
whole KB, in ``kb.characters.graph``), so adding or removing a file recomputes only that
file's part. A part is plain JSON (``to_dict``/``from_dict``) for the per-document cache.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kb.characters.names import (
    COMMON_SURNAMES,
    NameMatcher,
    is_plausible_name,
    jieba_person_candidates,
    naming_facts,
    speaker_candidates,
)
from kb.script import fold_keeping_offsets

__all__ = ["EXTRACTOR_VERSION", "DocumentCharacters", "extract_document"]

# 7: surname + name forms pass the name checks (甚不通 was one); 里 never ends a name.
# 8: 不 never starts a name (不通), reduplicated adjectives are not names (白森森), nor 施威.
# 10: names found in the text folded to simplified characters (kb.script): a traditional-script book.
# 11: jieba's nrt/nrfg person tags count when the word is surname + name (马岱 of 三国演义 was missing).
# 12: speakers the dictionary lacks are names too (段誉道, 马谡曰: kb.characters.names.speaker_candidates).
# 13: a simplified-script book's own spellings of its names (孙乾, not the folded 孙干): ``spellings``.
# 14: 号 names only where it is the naming verb (帝号, 旗号在前 and 号泣 named 在前 and 于寿春).
EXTRACTOR_VERSION = 14
"""Bump when extraction changes: cached parts of another version are recomputed."""

TRADITIONAL_SHARE = 0.05
"""A text whose folding to simplified characters changes at least this share of its characters is in
traditional script (三國演義: ~20 %); below it (三国演义: 0.06 %, 孙乾's 乾 and 朱儁's 儁) the names keep
the text's spellings."""
MAX_EVIDENCE = 3
"""Evidence windows kept per name pair and document."""
WINDOW_CHARS = 300
"""Paragraphs longer than this are cut into windows at sentence ends (co-occurrence span)."""

_SURNAME_FACT = re.compile(r"姓([\u4e00-\u9fff])(?=[，,名法。])")
_SENTENCE_END = re.compile(r"[。！？；]”?")


@dataclass
class DocumentCharacters:
    """Raw-name statistics of one document.

    ``names``: name -> {chapter: mentions} (chapter ``-1`` = no chapter); ``first``: name ->
    {chapter: [chunk_id, start, end]} of its first window per chapter (passages for the UI);
    ``pairs``: "a|b" (a < b) -> {"chapters": {chapter: windows}, "evidence": [[chunk_id,
    chapter, start, end], ...]}; ``facts``: naming patterns [kind, name, alias]; ``extended``:
    [short, long] pairs where ``long`` is a surname plus ``short`` (玄德 / 刘玄德).
    """

    doc_id: str | None
    source: str
    sha256: str | None
    names: dict[str, dict[int, int]] = field(default_factory=dict)
    first: dict[str, dict[int, list[Any]]] = field(default_factory=dict)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: list[list[str]] = field(default_factory=list)
    extended: list[list[str]] = field(default_factory=list)
    surnames: list[str] = field(default_factory=list)
    tagged: list[str] = field(default_factory=list)
    """Names jieba tags as person names (``nr``): preferred as a person's canonical name."""
    spellings: dict[str, dict[str, int]] = field(default_factory=dict)
    """Folded name -> {spelling in a simplified-script text: mentions}, where the two differ (孙干: 孙乾)."""
    version: int = EXTRACTOR_VERSION

    def mentions(self, name: str) -> int:
        return sum(self.names.get(name, {}).values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "doc_id": self.doc_id,
            "source": self.source,
            "sha256": self.sha256,
            "names": {n: {str(c): k for c, k in chs.items()} for n, chs in self.names.items()},
            "first": {n: {str(c): v for c, v in chs.items()} for n, chs in self.first.items()},
            "pairs": {
                key: {"chapters": {str(c): k for c, k in p["chapters"].items()}, "evidence": p["evidence"]}
                for key, p in self.pairs.items()
            },
            "facts": self.facts,
            "extended": self.extended,
            "surnames": self.surnames,
            "tagged": self.tagged,
            "spellings": self.spellings,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocumentCharacters:
        return cls(
            doc_id=data["doc_id"],
            source=data["source"],
            sha256=data["sha256"],
            names={n: {int(c): k for c, k in chs.items()} for n, chs in data["names"].items()},
            first={n: {int(c): v for c, v in chs.items()} for n, chs in data["first"].items()},
            pairs={
                key: {"chapters": {int(c): k for c, k in p["chapters"].items()}, "evidence": p["evidence"]}
                for key, p in data["pairs"].items()
            },
            facts=[list(f) for f in data["facts"]],
            extended=[list(e) for e in data["extended"]],
            surnames=list(data["surnames"]),
            tagged=list(data.get("tagged", [])),
            spellings={n: dict(s) for n, s in data.get("spellings", {}).items()},
            version=int(data.get("version", 0)),
        )


def book_surnames(text: str, candidates: Counter[str]) -> set[str]:
    """Surnames the book uses: ``姓X`` at least twice, or the first character of a 3-character
    candidate name (刘玄德 -> 刘)."""
    said = Counter(_SURNAME_FACT.findall(text))
    surnames = {s for s, n in said.items() if n >= 2}
    surnames |= {name[0] for name in candidates if len(name) == 3 and name[0] in COMMON_SURNAMES}
    return surnames


def windows(text: str) -> list[tuple[int, int]]:
    """Co-occurrence windows: paragraphs (lines), long ones cut at sentence ends."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        start, end = pos, pos + len(line)
        pos = end + 1
        if not line.strip():
            continue
        if end - start <= WINDOW_CHARS:
            spans.append((start, end))
            continue
        cut = start
        for m in _SENTENCE_END.finditer(line):
            stop = start + m.end()
            if stop - cut >= WINDOW_CHARS // 2:
                spans.append((cut, stop))
                cut = stop
        if cut < end:
            spans.append((cut, end))
    return spans


def extended_names(text: str, names: set[str], surnames: set[str], *, min_count: int = 3) -> list[list[str]]:
    """[short, surname+short] for 2-character names that the text also writes with a surname.

    Both forms must occur ``min_count`` times (the long one at least 3% as often as the short
    one, so a stray ``王曹操`` in ``魏王曹操`` does not count): 悟空/孙悟空, 玄德/刘玄德, 八戒/猪八戒.
    """
    found: list[list[str]] = []
    for short in sorted(n for n in names if len(n) == 2):
        total = text.count(short)
        if total < min_count:
            continue
        before = Counter(text[m.start() - 1] for m in re.finditer(short, text) if m.start() > 0)
        best = [(n, s) for s, n in before.most_common(3) if s in surnames]
        if not best:
            continue
        count, surname = best[0]
        if count >= min_count and count >= 0.03 * total and total - count >= min_count:
            if not title_compound(text, surname + short):
                found.append([short, surname + short])
    return found


def title_compound(text: str, long: str) -> bool:
    """Most occurrences of ``long`` follow one character (蛮王孟获): a title, not a surname."""
    before = Counter(text[m.start() - 1] for m in re.finditer(long, text) if m.start() > 0)
    total = sum(before.values())
    return bool(total) and before.most_common(1)[0][1] >= 0.6 * total and before.most_common(1)[0][0] not in "，。：“！？\n　 "


def short_forms(names: set[str], surnames: set[str]) -> set[str]:
    """2-character given names of 3-character candidates with a book surname (孙悟空 -> 悟空)."""
    return {n[1:] for n in names if len(n) == 3 and n[0] in surnames and is_plausible_name(n[1:])}


def extract_document(
    text: str,
    *,
    source: str,
    doc_id: str | None = None,
    sha256: str | None = None,
    chapters: Sequence[Any] = (),
    chunks: Sequence[Any] = (),
    min_count: int = 5,
) -> DocumentCharacters:
    """Names, naming facts and name co-occurrences of one document's text.

    ``chapters``: ``kb.Chapter``s (``number``, ``start``); ``chunks``: the KB's chunk
    Documents (metadata ``chunk_id``, ``start``) to cite evidence by chunk id. A traditional-script
    text is read folded to simplified characters (``kb.script.fold_keeping_offsets``: the offsets
    cited stay the text's own), so names, surnames and patterns are those of the simplified lists here
    and of jieba's dictionary, and the names are in simplified characters whatever the script; a
    simplified-script text's own spellings are kept beside them (``spellings``: OpenCC folds 孙乾 to 孙干).
    """
    original, text = text, fold_keeping_offsets(text)
    facts = list(naming_facts(text))
    candidates = jieba_person_candidates(text, min_count=min_count)
    speakers = speaker_candidates(text)
    pattern_names = {f.name for f in facts if f.name and f.kind != "called"} | {f.alias for f in facts if f.alias}
    names = {n for n in set(candidates) | pattern_names if is_plausible_name(n)} | set(speakers)
    surnames = book_surnames(text, candidates + speakers)
    names |= {s for s in short_forms(names, surnames) if text.count(s) >= min_count}
    extended = [[short, long] for short, long in extended_names(text, names, surnames) if is_plausible_name(long)]
    names |= {long for _, long in extended}
    part = DocumentCharacters(doc_id=doc_id, source=source, sha256=sha256, surnames=sorted(surnames))
    part.facts = [[f.kind, f.name, f.alias] for f in facts]
    part.extended = extended
    part.tagged = sorted(candidates)
    stated = {f.name for f in facts if f.kind == "full"}  # 姓刘名备: kept even if rarely written
    spelled = original if text != original and not is_traditional(original, text) else None
    count_windows(part, text, names, chapters=chapters, chunks=chunks, min_count=min_count, stated=stated,
                  original=spelled)
    return part


def is_traditional(original: str, folded: str) -> bool:
    """Whether folding changed at least ``TRADITIONAL_SHARE`` of ``original``'s characters."""
    changed = sum(a != b for a, b in zip(original, folded))
    return changed >= TRADITIONAL_SHARE * max(len(original), 1)


def count_windows(
    part: DocumentCharacters,
    text: str,
    names: set[str],
    *,
    chapters: Sequence[Any],
    chunks: Sequence[Any],
    min_count: int,
    stated: set[str] = frozenset(),
    original: str | None = None,
) -> None:
    """Fill ``part.names``/``first``/``pairs`` by scanning each window for names; ``part.spellings``
    from ``original`` (the unfolded text, same offsets) where it writes a name otherwise."""
    chapter_starts = [c.start for c in chapters]
    chapter_numbers = [c.number if c.number is not None else -1 for c in chapters]
    located = sorted(
        (c.metadata["start"], c.metadata.get("chunk_id")) for c in chunks if c.metadata.get("start") is not None
    )
    chunk_starts = [s for s, _ in located]

    def chapter_at(pos: int) -> int:
        i = bisect.bisect_right(chapter_starts, pos) - 1
        return chapter_numbers[i] if i >= 0 else -1

    def chunk_at(pos: int) -> Any:
        i = bisect.bisect_right(chunk_starts, pos) - 1
        return located[i][1] if i >= 0 else None

    matcher = NameMatcher(names)
    mentions: dict[str, Counter[int]] = defaultdict(Counter)
    first: dict[str, dict[int, list[Any]]] = defaultdict(dict)
    pairs: dict[str, dict[str, Any]] = {}
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for start, end in windows(text):
        found_at = list(matcher.finditer(text[start:end], start))
        hits = [name for name, _ in found_at]
        if original is not None:
            for name, at in found_at:
                if original[at : at + len(name)] != name:
                    spellings[name][original[at : at + len(name)]] += 1
        if not hits:
            continue
        found = set(hits)
        chapter = chapter_at(start)
        for name in hits:
            mentions[name][chapter] += 1
        for name in found:
            first[name].setdefault(chapter, [chunk_at(start), start, end])
        for a, b in itertools.combinations(sorted(found), 2):
            pair = pairs.setdefault(f"{a}|{b}", {"chapters": Counter(), "evidence": []})
            pair["chapters"][chapter] += 1
            if len(pair["evidence"]) < MAX_EVIDENCE:
                pair["evidence"].append([chunk_at(start), chapter, start, end])
    keep = {n for n, chs in mentions.items() if sum(chs.values()) >= min_count or n in stated}
    part.names = {n: dict(mentions[n]) for n in sorted(keep)}
    part.first = {n: first[n] for n in sorted(keep)}
    part.spellings = {n: dict(spellings[n]) for n in sorted(keep) if spellings.get(n)}
    part.pairs = {
        key: {"chapters": dict(p["chapters"]), "evidence": p["evidence"]}
        for key, p in pairs.items()
        if all(n in keep for n in key.split("|"))
    }
