"""``ingest query "问题" --kb NAME``: show the passages a question retrieves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

import click

from ingest.cli import ingest_command, settings_from_args
from kb.citation import source_label

if TYPE_CHECKING:
    from kb import KnowledgeBase


def open_kb(args: argparse.Namespace, **retrieval: object) -> KnowledgeBase:
    from kb import KnowledgeBase

    settings = settings_from_args(
        args,
        embedding={"device": args.embedding_device},
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


RETRIEVAL_FLAGS = ("kb", "kb_root", "k", "mode", "embedding", "embedding_device", "reranker")

command = ingest_command(
    "query",
    run,
    help="retrieve passages for a question",
    description=__doc__,
    arguments=[click.argument("question")],
    flags=(*RETRIEVAL_FLAGS, "threshold", "json"),
)
