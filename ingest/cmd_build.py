"""``ingest build FILE_OR_FOLDER...``: add or update documents in a knowledge base (a folder or a
ZIP archive: every document in it, ``kb.loaders.folders``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from configs.errors import BadInput
from ingest.cli import ingest_command, settings_from_args


def check_file_names(files: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse file names that are not UTF-8 before anything is read, naming the file and the
    fix (glmkb #20.16: a GBK-named file failed with "'utf-8' codec can't encode characters in
    position 16-17: surrogates not allowed", naming neither)."""
    for name in files:
        try:
            str(name).encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(name)
            raise BadInput(
                f"the file name {raw.decode('utf-8', 'replace')!r} is not UTF-8 (bytes {raw!r}); rename it to "
                "UTF-8 (e.g. `convmv -f gbk -t utf-8 --notest FILE`) and build again"
            ) from None


def run(args: argparse.Namespace) -> int:
    from kb import DamagedKnowledgeBaseError, KnowledgeBase
    from kb.unpacking import unpacking_folder

    check_file_names(args.files)

    settings = settings_from_args(
        args,
        embedding={"model": args.embedding, "device": args.embedding_device},
        chunking={"chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap},
        kb={"store": args.store},
    )

    def open_kb() -> KnowledgeBase:
        return KnowledgeBase.from_settings(
            settings,
            create=True,
            embedding_model=args.embedding,
            chunk_size=args.chunk_size,
            chunk_overlap=args.chunk_overlap,
            store=args.store,
        )

    try:
        kb = open_kb()
    except DamagedKnowledgeBaseError as e:  # a build never refuses because of damage (glmkb #20)
        recover_damaged(settings, str(e), quiet=args.quiet)
        kb = open_kb()
    if args.quiet and not kb.keyword_only:
        quiet_model_loading()  # imports transformers: only when an embedding model will load
    with unpacking_folder(kb.root) as unpacked:
        report = add_documents(kb, args.files, unpack_into=unpacked, quiet=args.quiet, ocr=settings.kb.ocr)
    print(f"{kb.name}: {report.summary()}")
    sys.stdout.flush()
    return 0


def add_documents(kb: Any, paths: Sequence[str], *, unpack_into: Path, quiet: bool, ocr: str) -> Any:
    """Add the files, folders and archives given (``kb.loaders.folders``); a note on stderr
    names what they held that no loader reads."""
    from kb.incoming import source_for_path
    from kb.loaders.folders import expand_documents

    found = expand_documents(paths, source=source_for_path, unpack_into=unpack_into)
    check_file_names(found.sources)
    if note := found.skipped_note():
        print(f"note: {note}", file=sys.stderr)
    report = kb.add_files(found.files, sources=found.sources, show_progress=not quiet, ocr=ocr)
    report.skipped, report.unread = found.skipped, found.unread
    return report


def recover_damaged(settings: object, damage: str, *, quiet: bool) -> None:
    """Repair a damaged knowledge base before building into it (``ingest doctor --repair``), or,
    when nothing in it can be saved, drop it so the build starts it afresh; says which on stderr."""
    from ingest.cmd_doctor import repair
    from kb import DamagedKnowledgeBaseError, KnowledgeBase

    name = settings.kb_name  # type: ignore[attr-defined]
    print(f"warning: {damage}", file=sys.stderr)
    try:
        print(f"warning: {repair(settings, name, show_progress=not quiet)}", file=sys.stderr)
    except DamagedKnowledgeBaseError as e:
        KnowledgeBase.drop_from_settings(settings, name=name)  # type: ignore[arg-type]
        print(f"warning: {e}; it was dropped and is built afresh from the given files", file=sys.stderr)


def quiet_model_loading() -> None:
    """``-q``: no "Loading weights" bar from transformers when the embedding model loads."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


command = ingest_command(
    "build",
    run,
    help="add or update documents in a knowledge base",
    description=(
        "Add documents to a knowledge base, creating it if needed: text (UTF-8, GBK/GB18030, Big5, "
        "UTF-16) and Markdown, PDF (scanned pages by OCR), DOCX, DOC, PPTX, PPT, XLSX, XLS (WPS Office's .wps, "
        ".dps, .et too), ODT, ODS, ODP, EPUB, MOBI/AZW3, HTML, RTF and images, "
        "recognised by content, and .csv/.tsv tables. A folder or a ZIP archive adds every such document in it "
        "(hidden files left out, other types skipped with a note). Unchanged files are skipped; changed files "
        "replace their old chunks."
    ),
    arguments=[click.argument("files", nargs=-1, required=True, metavar="FILE_OR_FOLDER...")],
    flags=("kb", "kb_root", "embedding", "store", "embedding_device", "chunk_size", "chunk_overlap", "ocr", "quiet"),
)
