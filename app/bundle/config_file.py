"""Step 4 of a bundle: ``config.yaml`` naming the bundled models and knowledge bases by paths
relative to the bundle folder (run.sh starts every command there), so the folder can live
anywhere on the server."""

from __future__ import annotations

from pathlib import Path

import yaml

HEADER = (
    "# glmkb settings of this offline bundle (every key: configs/default.yaml in glmkb).\n"
    "# Paths are relative to this folder: run.sh starts glmkb here. Environment variables\n"
    "# GLMKB_<SECTION>__<KEY> override these (e.g. GLMKB_LLM__DEVICE=cuda:1).\n"
)


def write_config(
    bundle: Path,
    *,
    model: str | None,
    embedding: str | None,
    kb_names: list[str],
) -> Path:
    """Write ``bundle/config.yaml``; ``model``/``embedding`` are paths relative to ``bundle``."""
    data = {
        "kb_root": "kb",
        "kb_name": kb_names[0] if kb_names else "default",
        "llm": {"backend": "local", "model_path": model, "device": "auto"},
        # No embedding model bundled: keyword-only (BM25) knowledge bases; the default hub
        # model could not be downloaded offline.
        "embedding": {"model": embedding or "none", "device": "auto"},
    }
    path = bundle / "config.yaml"
    path.write_text(HEADER + yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
