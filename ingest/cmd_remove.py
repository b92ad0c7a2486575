"""``ingest remove FILE... --kb NAME``: take documents out of a knowledge base."""

from __future__ import annotations

import argparse

from ingest.cli import settings_from_args
from ingest.cmd_build import add_kb_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "remove",
        help="remove documents from a knowledge base",
        description="Remove documents, named by path, file name (if unique) or doc id (see `ingest list --kb NAME`).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="document path, file name or doc id")
    add_kb_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase

    settings = settings_from_args(args)
    kb = KnowledgeBase.from_settings(settings)
    report = kb.remove(args.files)
    print(f"{kb.name}: {report.summary()}")
    return 0
