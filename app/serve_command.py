"""The ``glmkb serve`` click command: flags aligned with ``glmkb-web`` and ``glmkb-api``."""

from __future__ import annotations

from typing import Any

import click

from app.flags import click_model_options, model_overrides
from configs import load_settings
from configs.cli import run_command

__all__ = ["serve_command"]


@click.command("serve")
@click.option("--config", default=None, help="YAML settings file (default: $GLMKB_CONFIG)")
@click.option("--host", default=None, help="bind address for the UI and the API (ui.host, default 127.0.0.1; "
              "others need a login and an API key)")
@click.option("--port", type=int, default=None, help="TCP port (ui.port, default 7860); the API is under /v1")
@click.option("--auth-user", default=None, help="basic-auth user of the page (ui.auth_user); the password comes "
              "from ui.auth_password in YAML or GLMKB_UI__AUTH_PASSWORD")
@click.option("--allow-no-auth", is_flag=True, default=None,
              help="allow a non-loopback --host without a login or key (ui/api.allow_no_auth)")
@click.option("--concurrency", type=int, default=None, help="UI requests served at once (ui.concurrency)")
@click.option("--served-model-name", default=None, help="model id API clients use (api.served_model_name)")
@click_model_options
@click.option("--kb", default=None, help="knowledge base selected on start (kb_name)")
@click.option("-v", "--verbose", is_flag=True, default=False, help="log details and show tracebacks")
def serve_command(**flags: Any) -> None:
    """Serve the web UI and the OpenAI-compatible API in one process, sharing one model."""
    from app.serve import serve

    verbose = bool(flags.pop("verbose"))

    def work() -> int:
        overrides: dict[str, Any] = {
            **model_overrides(flags),
            "kb_name": flags["kb"],
            "ui": {
                "host": flags["host"],
                "port": flags["port"],
                "auth_user": flags["auth_user"],
                "allow_no_auth": flags["allow_no_auth"],
                "concurrency": flags["concurrency"],
            },
            "api": {"allow_no_auth": flags["allow_no_auth"], "served_model_name": flags["served_model_name"]},
        }
        return serve(load_settings(flags["config"], **overrides), verbose=verbose)

    raise SystemExit(run_command("glmkb serve", work, verbose=verbose))
