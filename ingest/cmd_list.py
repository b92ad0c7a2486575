"""``ingest list``: the knowledge bases under kb_root, or the documents of one."""

from __future__ import annotations

import argparse
import json

from ingest.cli import ingest_command, settings_from_args


def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase
    from kb.lifecycle import list_summaries

    settings = settings_from_args(args)
    if args.kb is None:
        # Counts come from each manifest alone; a damaged knowledge base is marked, never hides the others.
        rows = [_row(summary) for summary in list_summaries(settings.kb_root)]
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1))
        elif not rows:
            print(f"no knowledge bases in {settings.kb_root}; create one with `ingest build FILE --kb NAME`")
        else:
            for r in rows:
                if "error" in r:
                    print(f"{_cell(r['name'])}\tdamaged: {_cell(r['error'])}")
                    continue
                print(f"{_cell(r['name'])}\t{r['documents']} documents\t{r['chunks']} chunks\tembedding {_cell(r['embedding'])}")
        return 0
    kb = KnowledgeBase(settings.kb_root, args.kb)
    docs = kb.list_documents()
    if args.json:
        print(json.dumps([vars(d) for d in docs], ensure_ascii=False, indent=1))
        return 0
    for d in docs:
        chapters = f"{d.chapters} chapters" if d.chapters else "no chapters"
        print(f"{_cell(d.source)}\t{d.chars} chars\t{chapters}\t{d.chunks} chunks\t{d.encoding}\tid {d.doc_id}")
    if not docs:
        print(f"knowledge base {kb.name!r} is empty")
    return 0


def _row(summary: object) -> dict[str, object]:
    fields = vars(summary)
    if fields["error"] is not None:
        return {"name": fields["name"], "error": fields["error"]}
    return {k: v for k, v in fields.items() if k != "error"}


def _cell(value: object) -> str:
    """A value on one line of one column: tabs and newlines in names would break both (glmkb #20)."""
    return " ".join(str(value).split())


__all__ = ["command", "run"]


command = ingest_command(
    "list", run, help="list knowledge bases, or the documents of one (--kb)", description=__doc__, flags=("kb", "kb_root", "json")
)
