"""Serve the Gradio UI: the bind-address/auth policy and the one place that calls ``launch``.

Kept apart from the UI layout so the safety rules (auth on non-loopback addresses, never a
public share link, no telemetry) are checked before anything is loaded or bound.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

# Gradio reads this when it is imported; a private knowledge base never phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from app.api.guard import RequestGuard  # noqa: E402
from app.auth import AuthConfigError, is_loopback, resolve_auth  # noqa: E402
from app.web.upload_guard import UploadGuard  # noqa: E402
from app.web.ui import CSS, THEME  # noqa: E402
from configs import Settings, UISettings  # noqa: E402

__all__ = ["AuthConfigError", "is_loopback", "launch", "queue", "resolve_auth", "upload_limits"]

log = logging.getLogger(__name__)


def queue(demo: gr.Blocks, ui: UISettings) -> gr.Blocks:
    """Bound the work one page can queue: ``ui.concurrency`` events at once, ``ui.max_queue``
    waiting (issue 20 #7: one client queuing 100 questions blocked everyone for over 90 s;
    further events are refused with "queue full")."""
    return demo.queue(default_concurrency_limit=ui.concurrency, max_size=ui.max_queue)


def upload_limits(
    ui: UISettings, *, max_body_bytes: int | None, served_on: str | None = None, allowed_hosts: Sequence[str] = ()
) -> dict[str, Any]:
    """Body bounds for ``launch``/``mount_gradio_app``: ``max_file_size`` (Gradio refuses
    larger files), ``UploadGuard`` on the Gradio app, which refuses a request carrying more
    than ``ui.max_upload_files`` files, or more bytes than they may hold, before Gradio parses
    them (issue 20 #11: its upload route took 1,000 files, 200 MB in ~1 s, per request), and
    ``RequestGuard``'s ``max_body_bytes`` (``api.max_body_bytes``) on every other body: Gradio's
    routes parse a whole JSON body before their login check (an unauthenticated 100 MB POST to
    ``/gradio_api/queue/join`` took ~550 MiB before its 401). ``max_body_bytes`` None: the app the UI is
    mounted on has that guard already (``glmkb serve``'s API app). ``served_on``: the address the UI
    listens on (a loopback one: the guard's Host check, ``app.api.guard``)."""
    uploads = Middleware(UploadGuard, max_files=ui.max_upload_files, max_file_bytes=ui.max_upload_mb * 2**20)
    bodies = [] if max_body_bytes is None else [
        Middleware(RequestGuard, api_key=lambda: None, key_env="", max_body_bytes=max_body_bytes,
                   served_on=served_on, allowed_hosts=allowed_hosts)
    ]
    return {"max_file_size": f"{ui.max_upload_mb}mb", "app_kwargs": {"middleware": [*bodies, uploads]}}


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
    queue(demo, ui)
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
        **upload_limits(ui, max_body_bytes=settings.api.max_body_bytes, served_on=ui.host,
                        allowed_hosts=settings.api.allowed_hosts),
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
