"""``glmkb-web`` / ``glmkb web`` / ``python -m app``: the web UI's click command (flags from the
one table ``configs.flags``), the login policy checked before anything loads."""

from __future__ import annotations

import threading

from app.flags import MODEL_FLAGS, server_command
from configs import Settings

__all__ = ["PROG", "command", "main", "serve"]

PROG = "glmkb-web"


def serve(settings: Settings, *, verbose: bool = False, prog: str = PROG) -> int:
    """Check the auth policy before loading anything, then build, launch and block."""
    from app.auth import resolve_auth
    from app.services import Services
    from app.web.server import launch
    from app.web.ui import build_ui

    resolve_auth(settings.ui)
    services = Services.from_settings(settings)
    demo = build_ui(services)
    # quiet: Gradio's own banner tells CLI users to "set `share=True` in `launch()`", which
    # glmkb never allows; one line with the address replaces it.
    _, local_url, _ = launch(demo, settings, prevent_thread_lock=True, quiet=True)
    print(f"glmkb web UI: {local_url} (Ctrl+C stops it)", flush=True)
    # Load the model in the background so the first question does not wait for it; the
    # lock in Services makes a question asked meanwhile wait for this same load.
    threading.Thread(target=services.warm_up, name="glmkb-warm-up", daemon=True).start()
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0


command = server_command(
    PROG,
    help="glmkb web UI: knowledge-base chat with streamed answers and sources, long-text summaries, "
    "knowledge-base management.",
    flags=("ui_host", "ui_port", "auth_user", "ui_allow_no_auth", "concurrency", *MODEL_FLAGS, "kb"),
    serve=lambda: serve,
)
main = command.main_function()
