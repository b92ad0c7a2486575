"""Serve the Gradio UI: the bind-address/auth policy and the one place that calls ``launch``.

Kept apart from the UI layout so the safety rules (auth on non-loopback addresses, never a
public share link, no telemetry) are checked before anything is loaded or bound.
"""

from __future__ import annotations

import logging
import os

# Gradio reads this when it is imported; a private knowledge base never phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app.common import AuthConfigError, is_loopback  # noqa: E402
from app.ui import CSS, THEME  # noqa: E402
from configs import Settings, UISettings  # noqa: E402

log = logging.getLogger(__name__)


def resolve_auth(ui: UISettings) -> tuple[str, str] | None:
    """The ``(user, password)`` pair for Gradio's login page, or None for no login.

    Refuses (AuthConfigError) a half-configured login, and a non-loopback bind address without
    a login unless ``ui.allow_no_auth`` says the exposure is intended.
    """
    user = ui.auth_user
    password = ui.auth_password.get_secret_value() if ui.auth_password is not None else None
    if bool(user) != bool(password):
        missing = "ui.auth_password (GLMKB_UI__AUTH_PASSWORD)" if user else "ui.auth_user (--auth-user)"
        raise AuthConfigError(f"basic auth is half configured: set {missing} too, or neither")
    if user and password:
        return (user, password)
    if not is_loopback(ui.host) and not ui.allow_no_auth:
        raise AuthConfigError(
            f"refusing to serve on {ui.host} without a login: set ui.auth_user (--auth-user) and "
            "ui.auth_password (GLMKB_UI__AUTH_PASSWORD), or ui.allow_no_auth: true "
            "(--allow-no-auth) if anyone on the network may use it, or bind 127.0.0.1"
        )
    return None


def launch(
    demo: gr.Blocks,
    settings: Settings,
    *,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> tuple[object, str, str]:
    """Queue and start ``demo`` with the UI settings; share links are always off."""
    ui = settings.ui
    auth = resolve_auth(ui)
    demo.queue(default_concurrency_limit=ui.concurrency)
    log.info(
        "serving on http://%s:%d (login %s, concurrency %d)",
        ui.host,
        ui.port,
        "on" if auth else "off",
        ui.concurrency,
    )
    return demo.launch(
        server_name=ui.host,
        server_port=ui.port,
        auth=auth,
        auth_message="glmkb 知识库 — 请登录 / please log in" if auth else None,
        share=False,
        inbrowser=False,
        show_error=False,
        max_file_size=f"{ui.max_upload_mb}mb",
        state_session_capacity=ui.max_sessions,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        footer_links=["settings"],
        theme=THEME,
        css=CSS,
    )
