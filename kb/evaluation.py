"""Retrieval evaluation: recall@k and MRR of a knowledge base on question/evidence pairs.

A QA file is JSON Lines; each line has ``q`` (the question), ``evidence`` (a verbatim
substring of a source document that answers it) and optionally ``source`` (file name or
path). A retrieved chunk is a hit when its ``[start, end)`` overlaps the evidence's position
in the same document.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kb.errors import KnowledgeBaseError

if TYPE_CHECKING:
    from kb.docstore import DocumentInfo
    from kb.knowledge_base import KnowledgeBase

CUTOFFS: tuple[int, ...] = (1, 3, 5, 10)


@dataclass(frozen=True)
class QAItem:
    q: str
    evidence: str
    source: str | None = None


@dataclass
class EvalResult:
    """Recall at each cutoff, MRR (over the retrieved list) and the rank of the first hit per
    question (None = not retrieved)."""

    mode: str
    k: int
    recall: dict[int, float]
    mrr: float
    ranks: list[int | None] = field(default_factory=list)

    @classmethod
    def of_ranks(
        cls, ranks: list[int | None], *, mode: str, k: int = 10, cutoffs: Sequence[int] = CUTOFFS
    ) -> EvalResult:
        """Recall and MRR@``k`` from each question's first-hit rank (None: not retrieved)."""
        n = len(ranks)
        recall = {c: sum(r is not None and r <= c for r in ranks) / n for c in sorted({*cutoffs, k})}
        mrr = sum(1.0 / r for r in ranks if r is not None and r <= k) / n
        return cls(mode=mode, k=k, recall=recall, mrr=mrr, ranks=ranks)

    @property
    def questions(self) -> int:
        return len(self.ranks)

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "k": self.k,
            "questions": self.questions,
            **{f"recall@{c}": round(v, 4) for c, v in self.recall.items()},
            "mrr": round(self.mrr, 4),
        }


def load_qa(path: str | os.PathLike[str]) -> list[QAItem]:
    """Read a QA JSON Lines file, with the line number in every error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as e:
        raise KnowledgeBaseError(f"QA file not found: {path}") from e
    except UnicodeDecodeError as e:
        raise KnowledgeBaseError(f"QA file {path} is not UTF-8 JSON Lines") from e
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise KnowledgeBaseError(f"{path}:{number}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("q"), str) or not isinstance(row.get("evidence"), str):
            raise KnowledgeBaseError(f'{path}:{number}: each line needs "q" and "evidence" strings')
        if not row["q"].strip() or not row["evidence"]:
            raise KnowledgeBaseError(f"{path}:{number}: empty question or evidence")
        items.append(QAItem(row["q"], row["evidence"], row.get("source")))
    if not items:
        raise KnowledgeBaseError(f"QA file {path} has no questions")
    return items


def names_source(doc: DocumentInfo, source: str) -> bool:
    """True when a QA row's ``source`` (path, file name or doc id) names ``doc``."""
    return source in (doc.source, doc.doc_id) or Path(doc.source).name == Path(source).name


def check_sources(kb: KnowledgeBase, items: Sequence[QAItem]) -> None:
    """Refuse a QA file whose ``source`` names match no file in the knowledge base, naming them
    (otherwise every such question fails as "evidence does not occur", blaming the evidence)."""
    docs = kb.list_documents()
    missing = Counter(item.source for item in items if item.source and not any(names_source(d, item.source) for d in docs))
    if not missing:
        return
    named = ", ".join(f"{source!r} ({count} question{'s' if count > 1 else ''})" for source, count in missing.items())
    files = ", ".join(sorted(Path(d.source).name for d in docs)) or "none"
    raise KnowledgeBaseError(
        f"QA source names not in knowledge base {kb.name!r}: {named}; its files are: {files}. "
        'Fix each line\'s "source" or build the knowledge base from those files'
    )


def locate_evidence(kb: KnowledgeBase, item: QAItem) -> list[tuple[str, int, int]]:
    """Every ``(doc_id, start, end)`` where the evidence occurs (in ``item.source`` if given)."""
    docs = kb.list_documents()
    if item.source:
        docs = [d for d in docs if names_source(d, item.source)]
    places = []
    for doc in docs:
        text = kb.get_document_text(doc.doc_id)
        start = text.find(item.evidence)
        while start >= 0:
            places.append((doc.doc_id, start, start + len(item.evidence)))
            start = text.find(item.evidence, start + 1)
    return places


def evaluate(
    kb: KnowledgeBase, items: Sequence[QAItem], *, mode: str | None = None, k: int = 10, cutoffs: Sequence[int] = CUTOFFS
) -> EvalResult:
    """Retrieve ``max(k, cutoffs)`` chunks per question and score them against the evidence."""
    depth = max(k, *cutoffs)
    check_sources(kb, items)
    ranks: list[int | None] = []
    for number, item in enumerate(items, start=1):
        places = locate_evidence(kb, item)
        if not places:
            where = f"{item.source!r} in " if item.source else ""
            raise KnowledgeBaseError(
                f"question {number} ({item.q!r}): its evidence does not occur in {where}knowledge base {kb.name!r}"
            )
        hits = kb.search(item.q, mode=mode, k=depth, score_threshold=None)
        ranks.append(first_hit_rank(hits, places))
    return EvalResult.of_ranks(ranks, mode=mode or kb.mode, k=k, cutoffs=cutoffs)


def first_hit_rank(hits: Sequence[object], places: Sequence[tuple[str, int, int]]) -> int | None:
    """1-based rank of the first hit overlapping an evidence place, or None."""
    for rank, doc in enumerate(hits, start=1):
        meta = doc.metadata  # type: ignore[attr-defined]
        for doc_id, start, end in places:
            if meta["doc_id"] == doc_id and meta["start"] < end and start < meta["end"]:
                return rank
    return None
