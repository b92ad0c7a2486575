"""glmkb web UI (Gradio): knowledge-base chat with streamed answers and cited sources,
streamed long-text summaries, knowledge-base management. Run it with ``glmkb-web``.

Exports load lazily so that ``python -m app.api`` does not import gradio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "main": "app.cli",
    "AuthConfigError": "app.common",
    "launch": "app.server",
    "resolve_auth": "app.server",
    "SharedEmbeddings": "app.shared_embeddings",
    "AppState": "app.state",
    "build_ui": "app.ui",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
