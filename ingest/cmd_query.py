"""``ingest query "问题" --kb NAME``: show the passages a question retrieves."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.cli import settings_from_args
from ingest.cmd_build import add_kb_arguments

if TYPE_CHECKING:
    from kb import KnowledgeBase


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("query", help="retrieve passages for a question", description=__doc__)
    parser.add_argument("question", help="the question, e.g. 刘备在哪里与关羽张飞结义")
    add_kb_arguments(parser)
    add_retrieval_arguments(parser)
    parser.add_argument("--threshold", type=float, metavar="SCORE", help="drop hits scoring below SCORE")
    parser.add_argument("--json", action="store_true", help="print one JSON array of hits")
    parser.set_defaults(func=run)


def add_retrieval_arguments(parser: argparse.ArgumentParser) -> None:
    """``-k``, ``--mode``, ``--embedding`` and ``--rerank``, shared with ``ingest eval``."""
    parser.add_argument("-k", "--top-k", dest="k", type=int, metavar="N", help="hits to return (default: retrieval.top_k)")
    parser.add_argument("--mode", choices=("dense", "bm25", "hybrid"), help="default: retrieval.mode")
    parser.add_argument(
        "--embedding", metavar="MODEL", help="embedding model (must be the one the knowledge base was built with)"
    )
    parser.add_argument("--device", help="embedding device: auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--reranker", metavar="MODEL", help="cross-encoder that reorders hits (default: retrieval.reranker)")


def open_kb(args: argparse.Namespace, **retrieval: object) -> KnowledgeBase:
    from kb import KnowledgeBase

    settings = settings_from_args(
        args,
        embedding={"device": args.device},
        retrieval={"mode": args.mode, "top_k": args.k, "reranker": args.reranker, **retrieval},
    )
    return KnowledgeBase.from_settings(settings, embedding_model=args.embedding)


def note_keyword_only_fallback(kb: KnowledgeBase, args: argparse.Namespace) -> None:
    """Say on stderr that ``--mode hybrid`` runs bm25 alone on a keyword-only knowledge base
    (the search falls back silently, so the asked-for mode would otherwise look honoured)."""
    if args.mode == "hybrid" and kb.keyword_only:
        print(
            f"note: knowledge base {kb.name!r} is keyword-only (no vectors), so --mode hybrid searched "
            f"with bm25 alone; add vectors with: ingest build --embedding MODEL --kb {kb.name}",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    kb = open_kb(args, score_threshold=args.threshold)
    note_keyword_only_fallback(kb, args)
    docs = kb.search(args.question)
    hits = [
        {
            "text": d.page_content,
            "source": d.metadata["source"],
            "chapter": d.metadata["chapter"],
            "chapter_title": d.metadata["chapter_title"],
            "start": d.metadata["start"],
            "end": d.metadata["end"],
            "score": d.metadata["score"],
        }
        for d in docs
    ]
    if args.json:
        print(json.dumps(hits, ensure_ascii=False))
        return 0
    if not hits:
        print("no passages found")
    for rank, hit in enumerate(hits, start=1):
        where = Path(hit["source"]).name
        if hit["chapter"] is not None:
            where += f"  ch.{hit['chapter']} {hit['chapter_title']}"
        print(f"[{rank}] {hit['score']:.4f}  {where}  [{hit['start']}:{hit['end']}]")
        print("    " + hit["text"].replace("\n", "\n    "))
    return 0
