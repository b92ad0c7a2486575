"""``ingest eval QA.jsonl --kb NAME``: retrieval recall@1/3/5/10 and MRR on question/evidence pairs.

Each line of QA.jsonl is ``{"q": question, "evidence": verbatim answer text, "source": optional
file name}``; a retrieved chunk is a hit when it overlaps the evidence in its source.
"""

from __future__ import annotations

import argparse
import json

import click

from ingest.cli import ingest_command
from ingest.cmd_query import RETRIEVAL_FLAGS, note_keyword_only_fallback, open_kb


def run(args: argparse.Namespace) -> int:
    from kb import evaluate, load_qa

    items = load_qa(args.qa_file)
    kb = open_kb(args, score_threshold=None)
    note_keyword_only_fallback(kb, args)
    result = evaluate(kb, items, mode=args.mode, k=args.k or 10)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
        return 0
    recalls = "  ".join(f"recall@{c} {v:.3f}" for c, v in result.recall.items())
    print(f"{kb.name} ({result.mode}, {result.questions} questions): {recalls}  MRR@{result.k} {result.mrr:.3f}")
    return 0


command = ingest_command(
    "eval",
    run,
    help="measure retrieval recall and MRR on a QA file",
    description=__doc__,
    arguments=[click.argument("qa_file", metavar="QA.jsonl")],
    flags=(*RETRIEVAL_FLAGS, "json"),
)
