"""``ingest characters --kb NAME``: the persons of a knowledge base's novels and their relations.

Built without an LLM from the KB's own text (kb.characters), cached per document beside the
KB's versions, so only new files are read again. ``--json`` prints the fixed shape
``{"persons": [...], "relations": [...]}``; ``--png`` draws the graph; ``--llm`` names the
strongest relations with the configured chat model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import click

from ingest.cli import doc_body, ingest_command, settings_from_args


def build(args: argparse.Namespace, kb: Any) -> Any:
    """The graph for the parsed arguments (progress on stderr unless ``--quiet``)."""
    from chains.summarize import parse_chapter_range
    from kb.characters import character_graph, load_aliases

    aliases = load_aliases(args.aliases) if args.aliases else None
    chapters = parse_chapter_range(args.chapters) if args.chapters else None
    if chapters is not None:
        check_chapters(kb, args.source, chapters)

    def computing(info: Any) -> None:
        if not args.quiet:
            print(f"reading persons of {info.source} ...", file=sys.stderr)

    return character_graph(kb, source=args.source, aliases=aliases, chapters=chapters, on_compute=computing)


def check_chapters(kb: Any, source: str | None, chapters: tuple[int, int]) -> None:
    """Refuse a range with none of the documents' chapters (as ``ingest summarize`` does), rather
    than print an empty graph that reads as "no persons"."""
    from chains.summarize import check_chapters_present

    infos = [kb.get_document(source)] if source else kb.list_documents()
    numbers = [c.number for i in infos for c in kb.get_chapters(i.doc_id)]
    check_chapters_present(numbers, chapters, where="this document" if len(infos) == 1 else "this knowledge base")


def evidence_text(kb: Any) -> Any:
    """``evidence -> text`` reading the cited chunk from the KB."""
    chunks: dict[Any, str] = {}

    def text(evidence: dict[str, Any]) -> str:
        if not chunks:
            for info in kb.list_documents():
                chunks.update({c.metadata["chunk_id"]: c.page_content for c in kb.get_chunks(info.doc_id)})
        return chunks.get(evidence["chunk_id"], "")

    return text


def print_table(graph: Any, *, top: int) -> None:
    """Persons with aliases and closest neighbours, then the heaviest relations."""
    for person in graph.persons[:top]:
        aliases = "、".join(person.aliases[:6])
        near = "、".join(f"{n}({w})" for n, w in graph.neighbours(person.name, 4))
        print(f"{person.name}\t{person.mentions}\t{aliases or '-'}\t{near}")
    print()
    for r in graph.top(persons=top).relations[:top]:
        label = f" [{r.label}]" if r.label else ""
        print(f"{r.a} — {r.b}\t{r.weight}{label}\tchapters {len(r.chapters)}")


def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase

    if args.top < 1:
        raise ValueError(f"--top must be at least 1 (got {args.top})")
    settings = settings_from_args(args)
    kb = KnowledgeBase.from_settings(settings)
    graph = build(args, kb)
    if args.llm:
        from ingest.cmd_summarize import load_llm
        from kb.characters.labelling import label_relations

        label_relations(graph, load_llm(settings, quiet=args.quiet), passage_text=evidence_text(kb))
    if not graph.persons:
        print("no persons found: the documents name nobody often enough (5 mentions) to be a person", file=sys.stderr)
    if args.png and not graph.persons:
        print(f"{args.png} not written: there is nothing to draw", file=sys.stderr)
    elif args.png:
        from kb.characters.render import render_png

        result = render_png(graph.top(persons=args.top), args.png, font=args.font)
        if result.legend:
            print(
                f"warning: no CJK font found, so {result.path} numbers its nodes; install fonts-noto-cjk "
                "(or pass --font FILE). Legend: " + " ".join(f"{i}={n}" for i, n in result.legend.items()),
                file=sys.stderr,
            )
        elif not args.quiet:
            print(f"wrote {result.path}", file=sys.stderr)
    if args.json:
        print(json.dumps(graph.to_dict(), ensure_ascii=False))
    else:
        print_table(graph, top=args.top)
    return 0


command = ingest_command(
    "characters",
    run,
    help="persons and relations of the novels in a knowledge base",
    description=doc_body(__doc__),
    arguments=[
        click.option("--png", metavar="FILE", help="also draw the top persons to this PNG file"),
        click.option("--font", metavar="FILE", help="CJK font file for --png (default: search the system)"),
        click.option("--top", type=int, default=30, show_default=True, metavar="N", help="persons shown/drawn"),
        click.option("--llm", is_flag=True, help="label the strongest relations with the chat model"),
    ],
    flags=(
        "source", "chapters", "aliases", "kb", "kb_root", "json", "model_path", "device", "dtype", "quantization", "quiet",
    ),
)
