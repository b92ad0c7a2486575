"""Keyword retrieval with the character graph's aliases added to the question, against the question alone.

    python -m bench.query_aliases           # 三国演义 from ../shared/corpus, tests/data/sanguo_qa.jsonl
    python -m bench.query_aliases --tiny    # the first 8 questions only, to check the script

Why: most of BM25's misses on the sanguo questions are names the question and the text spell apart
(诸葛亮 / 孔明, docs/KB.md). Whole-book questions already search each named person's names
(``chains.book_chapters``); this measures whether plain KB search should too. Two forms per question
naming a person of the graph (``graph.names_in``): ``concat``, the question followed by the persons'
other names as one query; ``fused``, the question's hits and that query's hits fused by reciprocal rank
(k = 60, as hybrid retrieval fuses). Questions naming nobody keep their own hits in both.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import CORPUS, REPO, parser, print_table, write_result

DEPTH = 10


def _key(doc: Any) -> tuple[str, int]:
    return doc.metadata["doc_id"], doc.metadata["start"]


def fused(hit_lists: Sequence[Sequence[Any]], depth: int = DEPTH) -> list[Any]:
    """``kb.fusion.reciprocal_rank_fusion`` of hit lists, a chunk keyed by its document and start offset."""
    from kb.fusion import reciprocal_rank_fusion

    docs = {_key(d): d for hits in hit_lists for d in hits}
    return [docs[key] for key, _ in reciprocal_rank_fusion([[_key(d) for d in hits] for hits in hit_lists])][:depth]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    from kb import KnowledgeBase, load_qa
    from kb.characters import character_graph
    from kb.evaluation import EvalResult, first_hit_rank, locate_evidence

    items = load_qa(REPO / "tests" / "data" / "sanguo_qa.jsonl")[: 8 if args.tiny else None]
    ranks: dict[str, list[int | None]] = {"question": [], "concat": [], "fused": []}
    expanded = []
    with tempfile.TemporaryDirectory() as tmp:
        kb = KnowledgeBase(Path(tmp), "sanguo", create=True, embedding_model="none")
        kb.add_files([Path(os.environ.get("GLMKB_TEST_CORPUS", CORPUS)) / "sanguo.txt"])
        graph = character_graph(kb)
        for item in items:
            places = locate_evidence(kb, item)
            hits = kb.search(item.q, mode="bm25", k=DEPTH, score_threshold=None)
            others = [name for p in graph.names_in(item.q) for name in (p.name, *p.aliases) if name not in item.q]
            with_names = kb.search(f"{item.q} {' '.join(others)}", mode="bm25", k=DEPTH,
                                   score_threshold=None) if others else hits
            for form, found in (("question", hits), ("concat", with_names), ("fused", fused([hits, with_names]))):
                ranks[form].append(first_hit_rank(found, places))
            if others:
                expanded.append({"q": item.q, "names": others, **{f: r[-1] for f, r in ranks.items()}})
        kb.close()
    results = {form: EvalResult.of_ranks(r, mode="bm25", k=DEPTH) for form, r in ranks.items()}
    print_table(f"sanguo, {len(items)} questions ({len(expanded)} name a person of the graph), BM25",
                [(form, *(f"{v:.3f}" for v in e.recall.values()), f"{e.mrr:.3f}") for form, e in results.items()],
                ("query", "r@1", "r@3", "r@5", "r@10", "MRR"))
    scores = {form: e.as_dict() for form, e in results.items()}
    print(write_result(args.out, "query_aliases", {"scores": scores, "expanded": expanded}))


if __name__ == "__main__":
    main()
