"""``ingest ask "问题" --kb NAME [--scope book|chunk]``: answer a question from a knowledge base.

``--scope chunk`` (default) answers from the best few passages (KnowledgeBaseQAChain).
``--scope book`` answers whole-book questions ("诸葛亮一生做了哪些事？", optionally within
``--chapters 第40-60回`` of ``--source sanguo.txt``): chapters are picked with the character
graph's aliases, mapped in batches, and reduced into one cited answer (BookQAChain). The
answer streams to stdout, then the cited sources; progress goes to stderr, and so does a reasoning
model's thinking (``--hide-thinking`` leaves it out).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import click

from ingest.cli import doc_body, ingest_command, settings_from_args
from ingest.thinking import ThinkingEcho


def book_inputs(args: argparse.Namespace) -> tuple[tuple[int, int] | None, dict[str, list[str]] | None]:
    """``--chapters`` parsed and the ``--aliases`` file read, so a typo in either fails before the
    (slow) model load rather than after it."""
    from chains.summarize import parse_chapter_range
    from kb.characters import load_aliases

    chapters = parse_chapter_range(args.chapters) if args.chapters else None
    return chapters, (load_aliases(args.aliases) if args.aliases else None)


def book_chain(kb: Any, llm: Any, settings: Any, args: argparse.Namespace, *, aliases: Any = None) -> Any:
    """A ``BookQAChain`` over ``kb`` with its character graph (cached per document)."""
    from chains.book_qa_chain import BookQAChain
    from kb.characters import character_graph

    graph = character_graph(kb, source=args.source, aliases=aliases)
    return BookQAChain(
        kb=kb,
        llm=llm,
        graph=graph,
        max_input_tokens=settings.llm.max_input_tokens,
        batch_size=args.batch_size,
        max_chapters=args.max_chapters,
    )


def print_answer(events: Any, *, out: TextIO, err: TextIO, quiet: bool, hide_thinking: bool = False) -> Any:
    """Tokens to ``out`` as they come, progress lines and a reasoning model's thinking to ``err``, cited
    sources at the end."""
    from chains.citations import cited_numbers
    from chains.events import Answer, Progress, Reasoning, Token

    answer = None
    thinking = ThinkingEcho(err, hide=hide_thinking)
    for event in events:
        if isinstance(event, Progress) and not quiet:
            label = {"select": "chapters selected", "map": "chapters read", "collapse": "findings merged"}
            print(f"{label.get(event.stage, event.stage)}: {event.done}/{event.total}", file=err, flush=True)
        elif isinstance(event, Reasoning):
            thinking.write(event.text)
        elif isinstance(event, Token):
            thinking.close()
            out.write(event.text)
            out.flush()
        elif isinstance(event, Answer):
            answer = event
    thinking.close()
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
    from chains.book_qa_chain import check_book_chapters
    from ingest.cmd_summarize import load_llm
    from kb import KnowledgeBase

    if args.batch_size < 1 or args.max_chapters < 1:
        raise ValueError("--batch-size and --max-chapters must be at least 1")
    if args.scope == "chunk" and (args.chapters or args.source):
        raise ValueError("--chapters and --source need --scope book")
    settings = settings_from_args(args)
    kb = KnowledgeBase.from_settings(settings)
    if args.source:
        kb.get_document(args.source)  # a wrong name fails before the model loads
    chapters, aliases = book_inputs(args)  # so do a bad --chapters and --aliases
    check_book_chapters(kb, chapters, args.source)  # and a range the book does not have
    llm = load_llm(settings, quiet=args.quiet)
    if args.scope == "book":
        events = book_chain(kb, llm, settings, args, aliases=aliases).stream_answer(
            args.question, chapters=chapters, source=args.source
        )
    else:
        events = KnowledgeBaseQAChain.from_settings(kb.as_retriever(), llm, settings).stream_answer(args.question)
    print_answer(events, out=sys.stdout, err=sys.stderr, quiet=args.quiet, hide_thinking=args.hide_thinking)
    return 0


command = ingest_command(
    "ask",
    run,
    help="answer a question from a knowledge base (passages, or the whole book)",
    description=doc_body(__doc__),
    arguments=[
        click.argument("question"),
        click.option("--scope", type=click.Choice(["chunk", "book"]), default="chunk", show_default=True,
                     help="chunk: best passages; book: whole book, chapter by chapter"),
        click.option("--max-chapters", type=int, default=12, show_default=True, metavar="N",
                     help="chapters read at most"),
    ],
    flags=(
        "chapters", "source", "aliases", "batch_size",
        "kb", "kb_root", "mode", "k", "model_path", "device", "dtype", "quantization", "hide_thinking", "quiet",
    ),
)
