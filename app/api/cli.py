"""``glmkb-api`` / ``glmkb api`` / ``python -m app.api``: the API server's click command (flags
from the one table ``configs.flags``), the key policy checked before anything loads."""

from __future__ import annotations

import sys
import threading
from typing import Any

from app.flags import MODEL_FLAGS, server_command
from configs import Settings

__all__ = ["PROG", "command", "main", "serve", "uvicorn_options"]

PROG = "glmkb-api"


def uvicorn_options(settings: Settings, *, verbose: bool) -> dict[str, Any]:
    """uvicorn's limits for a server facing untrusted clients: idle connections are closed
    after ``api.timeout_keep_alive`` seconds, headers must arrive within
    ``app.slow_clients.HEADER_TIMEOUT_S`` (issue 20 #16: 300 trickling connections were held
    for 60 s), and are bounded by h11's size limit."""
    from app.slow_clients import HeaderTimeoutH11Protocol

    return {
        "http": HeaderTimeoutH11Protocol,
        "log_level": "info" if verbose else "warning",
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": settings.api.timeout_keep_alive,
        "h11_max_incomplete_event_size": 64 * 1024,
    }


def serve(settings: Settings, *, verbose: bool = False, prog: str = PROG) -> int:
    """Check the key policy before loading anything, load the model in the background, serve."""
    import uvicorn

    from app.api.app import create_app
    from app.auth import resolve_api_key
    from app.services import Services

    api_key = resolve_api_key(settings.api)
    services = Services.from_settings(settings, api_key=api_key)
    app = create_app(services, served_on=settings.api.host)
    threading.Thread(target=services.warm_up, name="glmkb-warm-up", daemon=True).start()
    print(
        f"{prog}: serving http://{settings.api.host}:{settings.api.port}/v1 (model "
        f"{services.model_id!r}, API key {'required' if api_key else 'off'})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, **uvicorn_options(settings, verbose=verbose))
    return 0


command = server_command(
    PROG,
    help="glmkb OpenAI-compatible API: chat completions, embeddings and knowledge-base search/chat over "
    "the configured model.",
    flags=("api_host", "api_port", "api_allow_no_auth", "served_model_name", *MODEL_FLAGS),
    serve=lambda: serve,
)
main = command.main_function()
