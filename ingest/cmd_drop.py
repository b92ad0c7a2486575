"""``ingest drop --kb NAME``: delete a whole knowledge base."""

from __future__ import annotations

import argparse
from pathlib import Path

from ingest.cli import settings_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "drop",
        help="delete a knowledge base",
        description=(
            "Delete a knowledge base and all its files (the source documents are not touched); "
            "works on a damaged knowledge base too."
        ),
    )
    parser.add_argument("--kb", metavar="NAME", required=True, help="knowledge base to delete")
    parser.add_argument("--kb-root", metavar="DIR", help="folder holding knowledge bases (default: kb_root setting)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase

    settings = settings_from_args(args)
    KnowledgeBase.drop_from_settings(settings)  # never opens it: a damaged one drops too
    print(f"dropped knowledge base {settings.kb_name!r} ({Path(settings.kb_root).expanduser() / settings.kb_name})")
    return 0
