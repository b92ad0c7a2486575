"""glmkb web UI (Gradio): knowledge-base chat with streamed answers and cited sources,
streamed long-text summaries, knowledge-base management. Run it with ``glmkb-web``."""

from app.cli import main
from app.server import AuthConfigError, launch, resolve_auth
from app.shared_embeddings import SharedEmbeddings
from app.state import AppState
from app.ui import build_ui

__all__ = ["AppState", "AuthConfigError", "SharedEmbeddings", "build_ui", "launch", "main", "resolve_auth"]
