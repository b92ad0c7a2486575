"""The ``glmkb serve`` click command: the web UI's and the API's flags from the one table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.flags import MODEL_FLAGS, server_command

__all__ = ["serve_command"]


def _serve() -> Any:
    from app.serve import serve

    return serve


def _api_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """``--allow-no-auth`` lifts both policies of the one address (the login and the API key)."""
    return {"api": {"allow_no_auth": params.get("ui_allow_no_auth")}}


serve_command = server_command(
    "serve",
    help="Serve the web UI and the OpenAI-compatible API in one process, sharing one model "
    "(--host/--port: the one address; the API is under /v1).",
    flags=(
        "ui_host", "ui_port", "auth_user", "ui_allow_no_auth", "concurrency", "served_model_name", *MODEL_FLAGS, "kb",
    ),
    serve=_serve,
    extra_overrides=_api_overrides,
)
