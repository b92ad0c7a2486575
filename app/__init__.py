"""glmkb's front ends over one shared service layer.

- ``app.services``: ``Services`` (the chat model, knowledge bases, embedding models), shared
  by every front end; it raises ``app.errors`` kinds that each front end maps at its edge.
- ``app.web``: the Gradio UI (``glmkb-web``); ``app.api``: the OpenAI-compatible API
  (``glmkb-api``); ``app.serve``: both in one process (``glmkb serve``, ``app.glmkb_cli``).

Exports load lazily so that ``python -m app.api`` does not import gradio.
"""

from __future__ import annotations

from configs.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
