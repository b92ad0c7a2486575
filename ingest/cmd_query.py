"""``ingest query "问题" --kb NAME``: show the passages a question retrieves."""

from __future__ import annotations

import argparse
import json

from ingest.cli import settings_from_args
from ingest.cmd_build import add_kb_arguments
from kb.citation import source_label


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


def open_kb(args: argparse.Namespace, **retrieval: object) -> object:
    from kb import KnowledgeBase

    settings = settings_from_args(
        args,
        embedding={"device": args.device},
        retrieval={"mode": args.mode, "top_k": args.k, "reranker": args.reranker, **retrieval},
    )
    return KnowledgeBase.from_settings(settings, embedding_model=args.embedding)


def run(args: argparse.Namespace) -> int:
    kb = open_kb(args, score_threshold=args.threshold)
    docs = kb.search(args.question)
    hits = [
        {
            "text": d.page_content,
            "source": d.metadata["source"],
            "chapter": d.metadata["chapter"],
            "chapter_title": d.metadata["chapter_title"],
            "page": d.metadata.get("page"),
            "page_end": d.metadata.get("page_end"),
            "section": d.metadata.get("section"),
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
        where = source_label(hit)  # e.g. "manual.pdf · p.12 · 3.2 安装", "sanguo.txt · 第3回 ..."
        if hit["chapter"] is not None:
            where += f"  ch.{hit['chapter']}"
        print(f"[{rank}] {hit['score']:.4f}  {where}  [{hit['start']}:{hit['end']}]")
        print("    " + hit["text"].replace("\n", "\n    "))
    return 0
