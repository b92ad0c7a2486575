"""``ingest remove FILE... --kb NAME``: take documents out of a knowledge base."""

from __future__ import annotations

import argparse

import click

from ingest.cli import ingest_command, settings_from_args


def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase

    settings = settings_from_args(args)
    kb = KnowledgeBase.from_settings(settings)
    report = kb.remove(args.files)
    print(f"{kb.name}: {report.summary()}")
    return 0


command = ingest_command(
    "remove",
    run,
    help="remove documents from a knowledge base",
    description=(
        "Remove documents, named by path, file name (if unique) or doc id (see `ingest list --kb NAME`); a "
        "folder or ZIP archive that was built removes every document built from it."
    ),
    arguments=[click.argument("files", nargs=-1, required=True, metavar="FILE...")],
    flags=("kb", "kb_root"),
)
