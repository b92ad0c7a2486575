"""glmkb's front ends over one shared service layer.

- ``app.services``: ``Services`` (the chat model, knowledge bases, embedding models), shared
  by every front end; it raises ``app.errors`` kinds that each front end maps at its edge.
- ``app.web``: the Gradio UI (``glmkb-web``); ``app.api``: the OpenAI-compatible API
  (``glmkb-api``); ``app.serve``: both in one process (``glmkb serve``, ``app.glmkb_cli``).

Exports load lazily so that ``python -m app.api`` does not import gradio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "main": "app.web.cli",
    "AuthConfigError": "app.auth",
    "launch": "app.web.server",
    "resolve_auth": "app.auth",
    "SharedEmbeddings": "app.services",
    "Services": "app.services",
    "build_ui": "app.web.ui",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
