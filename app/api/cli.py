"""``glmkb-api`` / ``python -m app.api``: load settings from flags, check the key policy, serve."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from typing import Any

from app.flags import add_model_flags, model_overrides
from configs import Settings, load_settings
from configs.cli import run_command

__all__ = ["PROG", "build_parser", "main", "serve", "settings_from_args", "uvicorn_options"]

PROG = "glmkb-api"


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror the settings keys; anything not given falls back to YAML/env/defaults."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="glmkb OpenAI-compatible API: chat completions, embeddings and knowledge-base "
        "search/chat over the configured model.",
    )
    p.add_argument("--config", help="YAML settings file (default: $GLMKB_CONFIG)")
    p.add_argument("--host", help="bind address (api.host, default 127.0.0.1; others need an API key)")
    p.add_argument("--port", type=int, help="TCP port (api.port, default 8000)")
    p.add_argument("--allow-no-auth", action="store_true", default=None,
                   help="allow a non-loopback --host without an API key (api.allow_no_auth)")
    p.add_argument("--served-model-name", help="model id clients use (api.served_model_name, default glmkb)")
    add_model_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``configs.load_settings`` with the flags as the top layer (unset flags are None)."""
    overrides: dict[str, Any] = {
        **model_overrides(args),
        "api": {
            "host": args.host,
            "port": args.port,
            "allow_no_auth": args.allow_no_auth,
            "served_model_name": args.served_model_name,
        },
    }
    return load_settings(args.config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; configuration errors are one line on stderr and exit 2."""
    args = build_parser().parse_args(argv)
    verbose = args.verbose
    return run_command(PROG, lambda: serve(settings_from_args(args), verbose=verbose), verbose=verbose)


def uvicorn_options(settings: Settings, *, verbose: bool) -> dict[str, Any]:
    """uvicorn's limits for a server facing untrusted clients: slow or idle connections are
    closed after ``api.timeout_keep_alive`` seconds (issue 20 #16: 300 trickling connections
    were held for 60 s), and headers are bounded by h11's limit."""
    return {
        "log_level": "info" if verbose else "warning",
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": settings.api.timeout_keep_alive,
        "h11_max_incomplete_event_size": 64 * 1024,
    }


def serve(settings: Settings, *, verbose: bool = False) -> int:
    """Check the key policy before loading anything, load the model in the background, serve."""
    import uvicorn

    from app.api.app import create_app
    from app.auth import resolve_api_key
    from app.services import Services

    api_key = resolve_api_key(settings.api)
    services = Services.from_settings(settings, api_key=api_key)
    app = create_app(services)
    threading.Thread(target=services.warm_up, name="glmkb-warm-up", daemon=True).start()
    print(
        f"{PROG}: serving http://{settings.api.host}:{settings.api.port}/v1 (model "
        f"{services.model_id!r}, API key {'required' if api_key else 'off'})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, **uvicorn_options(settings, verbose=verbose))
    return 0
