"""``ingest drop --kb NAME``: delete a whole knowledge base."""

from __future__ import annotations

import argparse
from pathlib import Path

from configs.errors import BadInput

from ingest.cli import ingest_command, settings_from_args




def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase

    if args.kb is None:
        raise BadInput("say which knowledge base to delete: ingest drop --kb NAME")
    settings = settings_from_args(args)
    KnowledgeBase.drop_from_settings(settings)  # never opens it: a damaged one drops too
    print(f"dropped knowledge base {settings.kb_name!r} ({Path(settings.kb_root).expanduser() / settings.kb_name})")
    return 0


command = ingest_command(
    "drop",
    run,
    help="delete a knowledge base",
    description=(
        "Delete a knowledge base and all its files (the source documents are not touched); "
        "works on a damaged knowledge base too."
    ),
    flags=("kb", "kb_root"),
)
