"""``ingest doctor --kb NAME [--repair]``: say what is damaged in a knowledge base, and repair it."""

from __future__ import annotations

import argparse
import sys

import click

from ingest.cli import ingest_command, settings_from_args


def run(args: argparse.Namespace) -> int:
    from kb import doctor, validate_kb_name

    settings = settings_from_args(args)
    # diagnose/repair join the name to kb_root themselves: `--kb ..` or `--kb /abs/path` must not
    # check (and repair, i.e. rewrite) a folder outside kb_root.
    found = doctor.diagnose(settings.kb_root, validate_kb_name(settings.kb_name))
    print("\n".join(found.lines()))
    if found.healthy:
        return 0
    if not args.repair:
        print(f"repair it with `ingest doctor --kb {found.name} --repair` (or drop it: `ingest drop --kb {found.name}`)")
        return 3
    print(repair(settings, found.name, show_progress=not args.quiet))
    sys.stdout.flush()
    return 0


def repair(settings: object, name: str, *, show_progress: bool = False) -> str:
    """Repair ``name`` with the settings' vector-store and embedding options; one line saying what was done."""
    from pathlib import Path

    from kb import doctor, lifecycle
    from kb.embedding import load_embeddings

    kb_dir = Path(settings.kb_root).expanduser() / name  # type: ignore[attr-defined]
    kb, emb = settings.kb, settings.embedding  # type: ignore[attr-defined]
    return doctor.repair(
        settings.kb_root,  # type: ignore[attr-defined]
        name,
        store_for=lambda m: lifecycle.make_store(
            m, kb_dir=kb_dir, kb_name=name, milvus_uri=kb.milvus_uri, token_env=kb.milvus_token_env
        ),
        embeddings_for=lambda model: load_embeddings(model, device=emb.device, batch_size=emb.batch_size),
        batch_size=emb.batch_size,
        show_progress=show_progress,
    )


__all__ = ["command", "repair", "run"]


command = ingest_command(
    "doctor",
    run,
    help="check a knowledge base for damage (--repair: rebuild or roll back)",
    description=(
        "Check every file of a knowledge base (pointer, manifest, docstore, BM25, vectors). With --repair, "
        "rebuild it from its stored text when that is intact, else roll back to the kept previous version."
    ),
    arguments=[click.option("--repair", is_flag=True, help="repair what can be repaired")],
    flags=("kb", "kb_root", "quiet"),
)
