"""``ingest ask "问题" --kb NAME [--scope book|chunk]``: answer a question from a knowledge base.

``--scope chunk`` (default) answers from the best few passages (KnowledgeBaseQAChain).
``--scope book`` answers whole-book questions ("诸葛亮一生做了哪些事？", optionally within
``--chapters 第40-60回`` of ``--source sanguo.txt``): chapters are picked with the character
graph's aliases, mapped in batches, and reduced into one cited answer (BookQAChain). The
answer streams to stdout, then the cited sources; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ingest.cli import settings_from_args
from ingest.cmd_build import add_kb_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ask", help="answer a question from a knowledge base", description=__doc__)
    parser.add_argument("question", help="the question, e.g. 诸葛亮一生做了哪些事？")
    add_kb_arguments(parser)
    parser.add_argument("--scope", choices=("chunk", "book"), default="chunk", help="chunk: best passages; book: whole book")
    parser.add_argument("--chapters", metavar="RANGE", help="book scope: only these chapters, e.g. 第40-60回")
    parser.add_argument("--source", metavar="FILE", help="book scope: only this document")
    parser.add_argument("--aliases", metavar="YAML", help="book scope: alias file for the character graph")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="chapters mapped per batch (default: 4)")
    parser.add_argument("--max-chapters", type=int, default=12, metavar="N", help="chapters read at most (default: 12)")
    parser.add_argument("--model-path", metavar="DIR", help="local chat model folder (default: llm.model_path)")
    parser.add_argument("--device", help="model device: auto, cpu, cuda, cuda:N, mps (default: llm.device)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run)


def book_chain(kb: Any, llm: Any, settings: Any, args: argparse.Namespace) -> Any:
    """A ``BookQAChain`` over ``kb`` with its character graph (cached per document)."""
    from chains.book_qa_chain import BookQAChain
    from kb.characters import character_graph, load_aliases

    aliases = load_aliases(args.aliases) if args.aliases else None
    graph = character_graph(kb, source=args.source, aliases=aliases)
    return BookQAChain(
        kb=kb,
        llm=llm,
        graph=graph,
        max_input_tokens=settings.llm.max_input_tokens,
        batch_size=args.batch_size,
        max_chapters=args.max_chapters,
    )


def print_answer(events: Any, *, out: TextIO, err: TextIO, quiet: bool) -> Any:
    """Tokens to ``out`` as they come, progress lines to ``err``, cited sources at the end."""
    from chains.citations import cited_numbers
    from chains.events import Answer, Progress, Token

    answer = None
    for event in events:
        if isinstance(event, Progress) and not quiet:
            label = {"select": "chapters selected", "map": "chapters read", "collapse": "findings merged"}
            print(f"{label.get(event.stage, event.stage)}: {event.done}/{event.total}", file=err, flush=True)
        elif isinstance(event, Token):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Answer):
            answer = event
    out.write("\n")
    if answer is not None and not answer.refused:
        numbers = cited_numbers(answer.text) or list(range(1, len(answer.sources) + 1))
        for n in numbers:
            if 1 <= n <= len(answer.sources):
                out.write(f"[{n}] {answer.sources[n - 1].label()}\n")
    out.flush()
    return answer


def run(args: argparse.Namespace) -> int:
    from chains import KnowledgeBaseQAChain
    from ingest.cmd_summarize import load_llm
    from kb import KnowledgeBase

    if args.batch_size < 1 or args.max_chapters < 1:
        raise ValueError("--batch-size and --max-chapters must be at least 1")
    if args.scope == "chunk" and (args.chapters or args.source):
        raise ValueError("--chapters and --source need --scope book")
    settings = settings_from_args(args, llm={"model_path": args.model_path, "device": args.device})
    kb = KnowledgeBase.from_settings(settings)
    if args.source:
        kb.get_document(args.source)  # a wrong name fails before the model loads
    llm = load_llm(settings, quiet=args.quiet)
    if args.scope == "book":
        events = book_chain(kb, llm, settings, args).stream_answer(
            args.question, chapters=args.chapters, source=args.source
        )
    else:
        events = KnowledgeBaseQAChain.from_settings(kb.as_retriever(), llm, settings).stream_answer(args.question)
    print_answer(events, out=sys.stdout, err=sys.stderr, quiet=args.quiet)
    return 0
