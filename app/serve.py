"""``glmkb serve``: the web UI and the API in one process over one ``Services`` (one model load).

The Gradio page is mounted on the API's FastAPI app (``gr.mount_gradio_app``) at ``/``; the API
keeps ``/v1`` and ``/health`` (routes added before the mount win). Both auth policies apply
to the one bind address: a non-loopback host needs the page's login and the API key.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from fastapi import FastAPI

from app.auth import resolve_api_key, resolve_auth
from app.services import Services
from configs import Settings

__all__ = ["create_server_app", "serve", "served_settings"]

log = logging.getLogger(__name__)


def served_settings(settings: Settings) -> Settings:
    """``settings`` with ``api.host``/``api.port`` set to the one address served (``ui.host``/``ui.port``)."""
    api = settings.api.model_copy(update={"host": settings.ui.host, "port": settings.ui.port})
    return settings.model_copy(update={"api": api})


def create_server_app(services: Services, *, served_on: str | None = None) -> FastAPI:
    """The API app with the web UI mounted at ``/`` (both over ``services``); ``served_on`` as for
    ``create_app``."""
    import gradio as gr

    from app.api.app import create_app
    from app.web.server import queue, upload_limits
    from app.web.ui import CSS, THEME, build_ui

    ui = services.settings.ui
    app = create_app(services, served_on=served_on)
    demo = queue(build_ui(services), ui)
    demo.state_session_capacity = ui.max_sessions  # what launch's state_session_capacity sets
    auth = resolve_auth(ui)
    return gr.mount_gradio_app(
        app,
        demo,
        path="",
        server_name=ui.host,
        server_port=ui.port,
        footer_links=["settings"],
        auth=auth,
        auth_message="glmkb 知识库 — 请登录 / please log in" if auth else None,
        show_error=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        theme=THEME,
        css=CSS,
        **upload_limits(ui, max_body_bytes=None),  # create_app's RequestGuard bounds the UI's bodies too
    )


def serve(settings: Settings, *, verbose: bool = False, prog: str = "glmkb serve") -> int:
    """Check both auth policies before loading anything, then serve UI and API until interrupted."""
    import uvicorn

    from app.api.cli import uvicorn_options

    settings = served_settings(settings)
    resolve_auth(settings.ui)
    api_key = resolve_api_key(settings.api)
    services = Services.from_settings(settings, api_key=api_key)
    app = create_server_app(services, served_on=settings.ui.host)
    # Load the model in the background so the first question does not wait for it.
    threading.Thread(target=services.warm_up, name="glmkb-warm-up", daemon=True).start()
    base = f"http://{settings.ui.host}:{settings.ui.port}"
    print(
        f"{prog}: serving the web UI at {base}/ and the API at {base}/v1 (model {services.model_id!r}, "
        f"API key {'required' if api_key else 'off'})",
        file=sys.stderr,
    )
    options: dict[str, Any] = uvicorn_options(settings, verbose=verbose)
    uvicorn.run(app, host=settings.ui.host, port=settings.ui.port, **options)
    return 0
