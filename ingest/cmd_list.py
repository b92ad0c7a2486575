"""``ingest list``: the knowledge bases under kb_root, or the documents of one."""

from __future__ import annotations

import argparse
import json

from ingest.cli import ingest_command, settings_from_args




def run(args: argparse.Namespace) -> int:
    from kb import KnowledgeBase, KnowledgeBaseError

    settings = settings_from_args(args)
    if args.kb is None:
        rows = []
        for name in KnowledgeBase.list_names(settings.kb_root):
            try:
                manifest = KnowledgeBase(settings.kb_root, name).manifest
            except KnowledgeBaseError as e:  # one damaged KB must not hide the others
                rows.append({"name": name, "error": str(e)})
                continue
            rows.append(
                {
                    "name": name,
                    "documents": manifest["counts"]["documents"],
                    "chunks": manifest["counts"]["chunks"],
                    "embedding": manifest["embedding"]["model"],
                    "chunk_size": manifest["chunking"]["chunk_size"],
                    "chunk_overlap": manifest["chunking"]["chunk_overlap"],
                    "updated_at": manifest.get("updated_at"),
                }
            )
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=1))
        elif not rows:
            print(f"no knowledge bases in {settings.kb_root}; create one with `ingest build FILE --kb NAME`")
        else:
            for r in rows:
                if "error" in r:
                    print(f"{r['name']}\tdamaged: {r['error']}")
                    continue
                print(f"{r['name']}\t{r['documents']} documents\t{r['chunks']} chunks\tembedding {r['embedding']}")
        return 0
    kb = KnowledgeBase(settings.kb_root, args.kb)
    docs = kb.list_documents()
    if args.json:
        print(json.dumps([vars(d) for d in docs], ensure_ascii=False, indent=1))
        return 0
    for d in docs:
        chapters = f"{d.chapters} chapters" if d.chapters else "no chapters"
        print(f"{d.source}\t{d.chars} chars\t{chapters}\t{d.chunks} chunks\t{d.encoding}\tid {d.doc_id}")
    if not docs:
        print(f"knowledge base {kb.name!r} is empty")
    return 0


__all__ = ["command", "run"]


command = ingest_command(
    "list", run, help="list knowledge bases, or the documents of one (--kb)", description=__doc__, flags=("kb", "kb_root", "json")
)
