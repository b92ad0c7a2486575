"""``ingest build FILE...``: add or update text files in a knowledge base."""

from __future__ import annotations

import argparse
import sys

from ingest.cli import settings_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "build",
        help="add or update documents (txt/md, PDF, DOCX, EPUB, HTML, images) in a knowledge base",
        description=(
            "Add documents to a knowledge base, creating it if needed: text (UTF-8, GBK/GB18030, Big5, "
            "UTF-16) and Markdown, PDF (scanned pages by OCR), DOCX, EPUB, HTML and images; the format "
            "is read from the file's content. Unchanged files are skipped; changed files replace their old chunks."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="documents to add")
    add_kb_arguments(parser)
    parser.add_argument(
        "--embedding",
        metavar="MODEL|none",
        help="embedding model (local folder or cached hub name); 'none' builds a keyword-only (BM25) "
        "knowledge base (default: the knowledge base's own model, else embedding.model)",
    )
    parser.add_argument(
        "--store",
        choices=("faiss", "milvus"),
        help="where a new knowledge base keeps its vectors: faiss files or a Milvus collection at "
        "kb.milvus_uri (default: the knowledge base's own store, else kb.store)",
    )
    parser.add_argument("--device", help="embedding device: auto, cpu, cuda, cuda:N, mps")
    parser.add_argument("--chunk-size", type=int, metavar="N", help="chunk length in characters (new knowledge bases)")
    parser.add_argument("--chunk-overlap", type=int, metavar="N", help="characters shared by neighbouring chunks")
    parser.add_argument(
        "--ocr",
        choices=("off", "auto", "force"),
        help="OCR for scanned PDF pages and images: auto = pages without a text layer, force = every page, "
        "off = never (default: kb.ocr)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def add_kb_arguments(parser: argparse.ArgumentParser) -> None:
    """``--kb`` and ``--kb-root``, shared by the knowledge-base subcommands."""
    parser.add_argument("--kb", metavar="NAME", help="knowledge base name (default: kb_name setting)")
    parser.add_argument("--kb-root", metavar="DIR", help="folder holding knowledge bases (default: kb_root setting)")


def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase

    settings = settings_from_args(
        args,
        embedding={"model": args.embedding, "device": args.device},
        chunking={"chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap},
        kb={"store": args.store, "ocr": args.ocr},
    )
    kb = KnowledgeBase.from_settings(
        settings,
        create=True,
        embedding_model=args.embedding,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        store=args.store,
    )
    if args.quiet and not kb.keyword_only:
        quiet_model_loading()  # imports transformers: only when an embedding model will load
    report = kb.add_files(args.files, show_progress=not args.quiet, ocr=settings.kb.ocr)
    print(f"{kb.name}: {report.summary()}")
    sys.stdout.flush()
    return 0


def quiet_model_loading() -> None:
    """``-q``: no "Loading weights" bar from transformers when the embedding model loads."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
