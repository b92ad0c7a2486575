"""``ingest summarize FILE_OR_DOC [--kb NAME] [--chapters 1-10]``: stream a summary to stdout.

Summarizes a file (any format ``ingest build`` reads), or a document of a knowledge base,
chapter by chapter (map), then merges the chapter summaries (reduce), printing the final
summary as it is generated. A progress bar goes to stderr, so ``ingest summarize novel.txt > summary.txt`` keeps the file clean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from ingest.cli import ingest_command, settings_from_args
from ingest.thinking import ThinkingEcho


def load_documents(args: argparse.Namespace, settings: Any) -> list[Any]:
    """The chapter documents to summarize: from ``--kb``, else the file, else the default KB."""
    from chains import documents_from_file, documents_from_kb
    from kb import KnowledgeBase, KnowledgeBaseError

    if args.kb is None and Path(args.target).is_file():
        return documents_from_file(args.target, chapters=args.chapters)
    try:
        kb = KnowledgeBase.from_settings(settings)
        return documents_from_kb(kb, args.target, chapters=args.chapters)
    except KnowledgeBaseError as e:
        if args.kb is None:
            msg = f"no file {args.target!r}, and not in the default knowledge base either: {e}"
            raise ValueError(msg) from e
        raise


def load_llm(settings: Any, *, quiet: bool = False) -> Any:
    """The chat model from ``settings.llm``, local or an OpenAI-compatible server (a one-line error says how to set one)."""
    from llm.factory import load_llm as load_configured_llm

    if not quiet:
        return load_configured_llm(settings)
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar
    try:
        return load_configured_llm(settings)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def describe(docs: list[Any]) -> str:
    """``sanguo.txt, chapters 1-10`` for the progress header."""
    source = Path(str(docs[0].metadata.get("source") or "?")).name
    numbers = [d.metadata["chapter"] for d in docs if d.metadata.get("chapter") is not None]
    if not numbers:
        return source
    return f"{source}, chapters {min(numbers)}-{max(numbers)} ({len(numbers)})"


def print_events(events: Any, *, out: TextIO, err: TextIO, quiet: bool, hide_thinking: bool = False) -> str:
    """Tokens to ``out`` as they come; progress as a tqdm bar and the final merge's thinking (a reasoning
    model) on ``err``. Returns the summary."""
    from tqdm import tqdm

    from chains import Progress, Reasoning, Summary, Token

    thinking = ThinkingEcho(err, hide=hide_thinking)
    bar: tqdm | None = None
    stage: str | None = None
    text = ""
    try:
        for event in events:
            if isinstance(event, Progress):
                if bar is None or stage != event.stage or bar.total != event.total:
                    if bar is not None:
                        bar.close()
                    label = "summarizing chapters" if event.stage == "map" else "merging summaries"
                    bar = tqdm(total=event.total, desc=label, unit="part", file=err, disable=quiet, leave=False)
                    stage = event.stage
                bar.update(event.done - bar.n)
            elif isinstance(event, (Reasoning, Token)):
                if bar is not None:
                    bar.close()
                    bar = None
                if isinstance(event, Reasoning):
                    thinking.write(event.text)
                    continue
                thinking.close()
                out.write(event.text)
                out.flush()
            elif isinstance(event, Summary):
                text = event.text
    finally:
        if bar is not None:
            bar.close()
        thinking.close()
    out.write("\n")
    out.flush()
    return text


def run(args: argparse.Namespace) -> int:
    from chains import stream_summary

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.token_max is not None and args.token_max < 1:  # else it fails after the whole map stage
        raise ValueError(f"--token-max must be at least 1 (got {args.token_max})")
    settings = settings_from_args(args, llm={"model_path": args.model_path, "device": args.device, "adapter": args.adapter})
    docs = load_documents(args, settings)  # before the (slow) model load: bad input fails fast
    llm = load_llm(settings, quiet=args.quiet)
    if not args.quiet:
        print(f"summarizing {describe(docs)}", file=sys.stderr)
    events = stream_summary(
        docs,
        llm=llm,
        max_input_tokens=settings.llm.max_input_tokens,
        batch_size=args.batch_size,
        token_max=args.token_max,
    )
    print_events(events, out=sys.stdout, err=sys.stderr, quiet=args.quiet, hide_thinking=args.hide_thinking)
    return 0


command = ingest_command(
    "summarize",
    run,
    help="summarize a file or knowledge-base document, streaming the result",
    description=(
        "Summarize a file (.txt, .pdf, .docx, .epub, ... as ingest build reads them) or a "
        "knowledge-base document chapter by chapter, then merge the "
        "chapter summaries, printing the final summary as it is generated. Progress goes to "
        "stderr, so `ingest summarize novel.txt > summary.txt` keeps the file clean; so does a reasoning "
        "model's thinking before the final summary (--hide-thinking leaves it out)."
    ),
    arguments=[
        click.argument("target", metavar="FILE_OR_DOC"),
        click.option("--token-max", type=int, metavar="N",
                     help="collapse chapter summaries while the final prompt exceeds N tokens (default: llm.max_input_tokens)"),
    ],
    flags=("chapters", "batch_size", "kb", "kb_root", "model_path", "device", "dtype", "quantization", "adapter",
           "merge_adapter", "hide_thinking", "quiet"),
)
