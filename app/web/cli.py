"""``glmkb-web`` / ``python -m app``: load settings from flags, check the bind policy, serve."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence
from typing import Any

from app.flags import add_model_flags, model_overrides
from configs import Settings, load_settings
from configs.cli import run_command

PROG = "glmkb-web"


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror the settings keys; anything not given falls back to YAML/env/defaults."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="glmkb web UI: knowledge-base chat with streamed answers and sources, "
        "long-text summaries, knowledge-base management.",
    )
    p.add_argument("--config", help="YAML settings file (default: $GLMKB_CONFIG)")
    p.add_argument("--host", help="bind address (ui.host, default 127.0.0.1; others need a login)")
    p.add_argument("--port", type=int, help="TCP port (ui.port, default 7860)")
    p.add_argument("--auth-user", help="basic-auth user (ui.auth_user); the password comes from "
                   "ui.auth_password in YAML or GLMKB_UI__AUTH_PASSWORD, never from a flag")
    p.add_argument("--allow-no-auth", action="store_true", default=None,
                   help="allow a non-loopback --host without a login (ui.allow_no_auth)")
    p.add_argument("--concurrency", type=int, help="requests served at once (ui.concurrency)")
    add_model_flags(p)
    p.add_argument("--kb", help="knowledge base selected on start (kb_name)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``configs.load_settings`` with the flags as the top layer (unset flags are None)."""
    overrides: dict[str, Any] = {
        **model_overrides(args),
        "kb_name": args.kb,
        "ui": {
            "host": args.host,
            "port": args.port,
            "auth_user": args.auth_user,
            "allow_no_auth": args.allow_no_auth,
            "concurrency": args.concurrency,
        },
    }
    return load_settings(args.config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; configuration errors are one line on stderr and exit 2."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: serve(settings_from_args(args)), verbose=args.verbose)


def serve(settings: Settings) -> int:
    """Check the auth policy before loading anything, then build, launch and block."""
    from app.auth import resolve_auth
    from app.services import Services
    from app.web.server import launch
    from app.web.ui import build_ui

    resolve_auth(settings.ui)
    services = Services.from_settings(settings)
    demo = build_ui(services)
    launch(demo, settings, prevent_thread_lock=True)
    # Load the model in the background so the first question does not wait for it; the
    # lock in Services makes a question asked meanwhile wait for this same load.
    threading.Thread(target=services.warm_up, name="glmkb-warm-up", daemon=True).start()
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0
