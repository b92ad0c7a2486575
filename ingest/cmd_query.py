"""``ingest query "问题" --kb NAME``: show the passages a question retrieves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import click

from ingest.cli import ingest_command, settings_from_args


def open_kb(args: argparse.Namespace, **retrieval: object) -> object:
    from kb import KnowledgeBase

    settings = settings_from_args(
        args,
        embedding={"device": args.embedding_device},
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


RETRIEVAL_FLAGS = ("kb", "kb_root", "k", "mode", "embedding", "embedding_device", "reranker")

command = ingest_command(
    "query",
    run,
    help="retrieve passages for a question",
    description=__doc__,
    arguments=[click.argument("question")],
    flags=(*RETRIEVAL_FLAGS, "threshold", "json"),
)
