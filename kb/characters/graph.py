"""The character graph of a knowledge base: persons with aliases, weighted co-occurrence relations.

``build_graph(parts, aliases=..., chapters=...)`` merges the per-document parts
(``kb.characters.document``): names are grouped into persons by the naming facts the books
state (``姓刘名备，字玄德``), surname forms (``玄德``/``刘玄德``), the ``X公`` honorific of a
book's dominant ``X`` and the user's alias file; then mentions and co-occurrences are summed
per person, optionally only within a chapter range. ``CharacterGraph.to_dict()`` is the
``ingest characters --json`` shape.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.characters.document import DocumentCharacters
from kb.characters.names import COMMON_SURNAMES, COMPOUND_SURNAMES
from kb.script import fold_script

__all__ = ["CharacterGraph", "Person", "Relation", "build_graph", "load_aliases", "resolve_aliases"]

ChapterRange = tuple[int, int]
# A name that is another's plus one character, mentioned at most 1/FUSION_RATIO as often, is that
# name fused with the next word (张飞引 of 张飞引兵), not a person (_fusions).
FUSION_RATIO = 5


@dataclass
class Person:
    name: str
    aliases: list[str]
    mentions: int
    chapters: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "aliases": self.aliases, "mentions": self.mentions, "chapters": self.chapters}


@dataclass
class Relation:
    a: str
    b: str
    weight: int
    chapters: list[int]
    label: str | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "weight": self.weight,
            "chapters": self.chapters,
            "label": self.label,
            "evidence": self.evidence,
        }


def load_aliases(path: str | Path) -> dict[str, list[str]]:
    """A user alias file: YAML mapping ``canonical name: [alias, ...]``."""
    import yaml

    from configs.errors import BadInput

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        msg = f"cannot read alias file {path}: {e.strerror}; give a YAML file like '诸葛亮: [孔明, 卧龙]'"
        raise BadInput(msg) from e
    except yaml.YAMLError as e:
        msg = f"alias file {path} is not valid YAML ({e.__class__.__name__}); write lines like '诸葛亮: [孔明, 卧龙]'"
        raise BadInput(msg) from e
    if not isinstance(data, dict) or not all(isinstance(v, (list, str)) for v in data.values()):
        msg = f"alias file {path} must map each canonical name to a list of aliases, e.g. '诸葛亮: [孔明, 卧龙]'"
        raise BadInput(msg)
    return {str(k): [str(a) for a in ([v] if isinstance(v, str) else v)] for k, v in data.items()}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


def resolve_aliases(
    parts: Sequence[DocumentCharacters], user_aliases: Mapping[str, Sequence[str]] | None = None
) -> dict[str, str]:
    """Map every known name to its person's canonical name."""
    mentions = _name_mentions(parts)
    uf = _UnionFind()
    full_names: set[str] = set()
    alias_side: set[str] = set()
    claims: dict[str, set[str]] = defaultdict(set)
    for part in parts:
        for kind, name, alias in part.facts:
            if kind == "full" and name in mentions:
                full_names.add(name)
            elif kind == "courtesy" and name in mentions and alias in mentions:
                claims[alias].add(name)
            elif kind in ("self", "called") and name in mentions and alias in mentions:
                uf.union(alias, name)  # 唐僧道：“贫僧……法名玄奘”: he says so himself
                alias_side.add(alias)
    for alias, names in claims.items():
        if len(names) == 1:  # 字公明 is 徐晃's and 管辂's: an ambiguous courtesy name joins nobody
            uf.union(alias, next(iter(names)))
            alias_side.add(alias)
    for part in parts:
        for short, long in part.extended:
            if short in mentions and long in mentions:
                uf.union(short, long)
                alias_side.add(short)
    forced: dict[str, str] = {}
    for canonical, aliases in (user_aliases or {}).items():
        for alias in aliases:
            uf.union(alias, canonical)
            alias_side.add(alias)
        forced[uf.find(canonical)] = canonical
    surnames = {s for part in parts for s in part.surnames}
    tagged = {n for part in parts for n in part.tagged}
    _merge_honorifics(uf, mentions, surnames, alias_side)
    _merge_surname_and_alias(uf, mentions, alias_side)
    for name, shorter in _fusions(mentions, user_aliases).items():  # 张飞引 is 张飞 (and so is what joined it)
        uf.union(name, shorter)
        alias_side.add(name)
    clusters: dict[str, list[str]] = defaultdict(list)
    for name in set(mentions) | set(uf.parent):
        clusters[uf.find(name)].append(name)
    resolved: dict[str, str] = {}
    for root, members in clusters.items():
        canonical = forced.get(root) or _canonical(members, mentions, full_names, alias_side, tagged)
        for name in members:
            resolved[name] = canonical
    return resolved


def _name_mentions(parts: Sequence[DocumentCharacters]) -> Counter[str]:
    """How often each name is mentioned in all the parts."""
    mentions: Counter[str] = Counter()
    for part in parts:
        for name, chs in part.names.items():
            mentions[name] += sum(chs.values())
    return mentions


def _fusions(mentions: Counter[str], user_aliases: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """Names that are a known name with one more character fused on, mentioned at most a fifth
    as often (张飞引 of 张飞引兵, 沙僧牵 of 沙僧牵马, 孔明教 of 孔明教人): mentions of the shorter
    name's person, never persons or aliases of their own. A compound surname is not such a name
    (司马炎, 诸葛瞻 are persons), nor is a name the user's alias file gives."""
    given = {n for canonical, names in (user_aliases or {}).items() for n in (canonical, *names)}
    return {
        name: name[:-1]
        for name in mentions
        if len(name) >= 3 and name[:-1] in mentions and name[:-1] not in COMPOUND_SURNAMES and name not in given
        and mentions[name[:-1]] >= FUSION_RATIO * mentions[name]
    }


def _canonical(
    members: list[str], mentions: Counter[str], full_names: set[str], alias_side: set[str], tagged: set[str]
) -> str:
    """A stated full name (姓X名Y), else a name that is nobody's alias (one jieba knows as a
    person name first: 唐僧 over 三藏), most mentioned first."""
    free = [m for m in members if m not in alias_side]
    for pool in ([m for m in members if m in full_names], [m for m in free if m in tagged], free, members):
        if pool:
            return max(pool, key=lambda m: (mentions[m], len(m), m))
    raise AssertionError("empty cluster")


def _merge_honorifics(uf: _UnionFind, mentions: Counter[str], surnames: set[str], alias_side: set[str]) -> None:
    """``X公`` joins the person of surname X mentioned at least 3x as often as the next (关公 -> 关羽)."""
    totals: Counter[str] = Counter()
    for name, n in mentions.items():
        totals[uf.find(name)] += n
    for name in list(mentions):
        if len(name) != 2 or name[1] != "公" or name[0] not in surnames | COMMON_SURNAMES:
            continue
        rivals = Counter()
        for root, n in totals.items():
            if root != uf.find(name) and any(
                m.startswith(name[0]) and m != name for m in uf.parent if uf.find(m) == root
            ):
                rivals[root] = n
        best = rivals.most_common(2)
        if best and (len(best) == 1 or best[0][1] >= 3 * best[1][1]):
            uf.union(name, best[0][0])
            alias_side.add(name)


def _merge_surname_and_alias(uf: _UnionFind, mentions: Counter[str], alias_side: set[str]) -> None:
    """``唐三藏`` joins the person of ``三藏`` when that person also has a name starting with 唐
    (唐僧): the first character is that person's surname (or by-name) and the rest one of his
    names, as 孙 + 行者 or 刘 + 玄德."""
    members: dict[str, list[str]] = defaultdict(list)
    for name in mentions:
        members[uf.find(name)].append(name)
    for name in list(mentions):
        rest = name[1:]
        if len(name) != 3 or rest not in mentions or uf.find(rest) == uf.find(name):
            continue
        if any(m[0] == name[0] and m != name for m in members[uf.find(rest)]):
            uf.union(name, rest)
            alias_side.add(name)


def _in_range(chapter: int, chapters: ChapterRange | None) -> bool:
    return chapters is None or (chapter >= 0 and chapters[0] <= chapter <= chapters[1])


@dataclass
class CharacterGraph:
    """Persons (most mentioned first) and relations (heaviest first) of some documents."""

    persons: list[Person]
    relations: list[Relation]
    canonical: dict[str, str]
    passages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fixed JSON shape: ``{"persons": [...], "relations": [...]}``."""
        return {"persons": [p.to_dict() for p in self.persons], "relations": [r.to_dict() for r in self.relations]}

    def canonical_name(self, name: str) -> str:
        """The canonical name of the person called ``name`` (as written, else folded); else ``name`` folded."""
        folded = fold_script(name)
        return self.canonical.get(name) or self.canonical.get(folded, folded)

    def person(self, name: str) -> Person | None:
        """The person called ``name`` (canonical name or any alias, in either script)."""
        canonical = self.canonical_name(name)
        return next((p for p in self.persons if p.name == canonical), None)

    def neighbours(self, name: str, k: int = 10) -> list[tuple[str, int]]:
        """The ``k`` persons most often seen with ``name``, with the weights."""
        canonical = self.canonical_name(name)
        found = [(r.b if r.a == canonical else r.a, r.weight) for r in self.relations if canonical in (r.a, r.b)]
        return sorted(found, key=lambda x: -x[1])[:k]

    def names_in(self, text: str) -> list[Person]:
        """Persons whose canonical name or an alias occurs in ``text``, in either script (longest names first)."""
        folded = fold_script(text)
        hits: dict[str, Person] = {}
        for name in sorted(self.canonical, key=len, reverse=True):
            if name in folded or name in text:
                person = self.person(name)
                if person is not None:
                    hits.setdefault(person.name, person)
        return list(hits.values())

    def top(self, *, persons: int = 40, relations: int = 120, min_weight: int = 2) -> CharacterGraph:
        """The ``persons`` most mentioned persons and the heaviest relations among them."""
        kept = self.persons[:persons]
        names = {p.name for p in kept}
        rels = [r for r in self.relations if r.a in names and r.b in names and r.weight >= min_weight][:relations]
        return CharacterGraph(kept, rels, self.canonical, {n: self.passages.get(n, []) for n in names})


def build_graph(
    parts: Sequence[DocumentCharacters],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    chapters: ChapterRange | None = None,
    min_mentions: int = 5,
    min_weight: int = 1,
) -> CharacterGraph:
    """Merge document parts into one graph (see the module docstring); ``aliases`` in either script."""
    if aliases:
        aliases = {fold_script(name): [fold_script(a) for a in names] for name, names in aliases.items()}
    canonical = resolve_aliases(parts, aliases)
    mentions: Counter[str] = Counter()
    name_mentions: Counter[str] = Counter()
    person_chapters: dict[str, set[int]] = defaultdict(set)
    passages: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for part in parts:
        for name, chs in part.names.items():
            person = canonical.get(name, name)
            for chapter, n in chs.items():
                if _in_range(chapter, chapters):
                    mentions[person] += n
                    name_mentions[name] += n
                    if chapter >= 0:
                        person_chapters[person].add(chapter)
        for name, firsts in part.first.items():
            person = canonical.get(name, name)
            for chapter, (chunk_id, start, end) in firsts.items():
                if _in_range(chapter, chapters):
                    passages[person].append(
                        {"source": part.source, "doc_id": part.doc_id, "chapter": chapter if chapter >= 0 else None,
                         "chunk_id": chunk_id, "start": start, "end": end}
                    )
    fused = _fusions(_name_mentions(parts), aliases)
    members: dict[str, list[str]] = defaultdict(list)
    for name, person in canonical.items():
        if name != person and name_mentions[name] > 0 and name not in fused:
            members[person].append(name)
    persons = [
        Person(name, sorted(members[name], key=lambda m: -name_mentions[m]), n, sorted(person_chapters[name]))
        for name, n in mentions.most_common()
        if n >= min_mentions
    ]
    kept = {p.name for p in persons}
    relations = _relations(parts, canonical, kept, chapters, min_weight)
    for name, person_passages in passages.items():
        person_passages.sort(key=lambda p: (p["source"], p["chapter"] or 0, p["start"]))
        seen: set[tuple[Any, Any]] = set()  # one passage per chapter (玄德's and 刘备's first windows)
        passages[name] = [p for p in person_passages if not ((p["doc_id"], p["chapter"]) in seen or seen.add((p["doc_id"], p["chapter"])))]
    graph = CharacterGraph(persons, relations, canonical, {n: passages[n] for n in kept})
    return respelled(graph, book_spellings(parts))


def book_spellings(parts: Sequence[DocumentCharacters]) -> dict[str, str]:
    """Folded name -> the spelling simplified-script texts use for most of its mentions (孙干 -> 孙乾)."""
    spelled: dict[str, Counter[str]] = defaultdict(Counter)
    for part in parts:
        for name, spellings in part.spellings.items():
            spelled[name].update(spellings)
    mentions = _name_mentions(parts)
    return {
        name: counts.most_common(1)[0][0]
        for name, counts in spelled.items()
        if counts.most_common(1)[0][1] * 2 > mentions[name]
    }


def respelled(graph: CharacterGraph, spellings: Mapping[str, str]) -> CharacterGraph:
    """``graph`` with its names in the books' own spellings; ``canonical`` takes both forms."""
    if not spellings:
        return graph

    def spell(name: str) -> str:
        return spellings.get(name, name)

    persons = [Person(spell(p.name), [spell(a) for a in p.aliases], p.mentions, p.chapters) for p in graph.persons]
    relations = [
        Relation(spell(r.a), spell(r.b), r.weight, r.chapters, r.label, r.evidence) for r in graph.relations
    ]
    canonical = {name: spell(person) for name, person in graph.canonical.items()}
    canonical.update({spell(name): spell(person) for name, person in graph.canonical.items()})
    passages = {spell(name): found for name, found in graph.passages.items()}
    return CharacterGraph(persons, relations, canonical, passages)


def _relations(
    parts: Iterable[DocumentCharacters],
    canonical: Mapping[str, str],
    kept: set[str],
    chapters: ChapterRange | None,
    min_weight: int,
) -> list[Relation]:
    """Co-occurrence windows summed per person pair (alias pairs of one person are skipped)."""
    weights: Counter[tuple[str, str]] = Counter()
    pair_chapters: dict[tuple[str, str], set[int]] = defaultdict(set)
    evidence: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for part in parts:
        for key, pair in part.pairs.items():
            a, b = (canonical.get(n, n) for n in key.split("|"))
            if a == b or a not in kept or b not in kept:
                continue
            edge = (a, b) if a < b else (b, a)
            for chapter, n in pair["chapters"].items():
                if _in_range(chapter, chapters):
                    weights[edge] += n
                    if chapter >= 0:
                        pair_chapters[edge].add(chapter)
            for chunk_id, chapter, start, end in pair["evidence"]:
                if _in_range(chapter, chapters) and len(evidence[edge]) < 3:
                    evidence[edge].append(
                        {"chunk_id": chunk_id, "chapter": chapter if chapter >= 0 else None, "start": start, "end": end}
                    )
    return [
        Relation(a, b, w, sorted(pair_chapters[(a, b)]), None, evidence[(a, b)])
        for (a, b), w in weights.most_common()
        if w >= min_weight
    ]
