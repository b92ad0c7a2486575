"""``create_app(services)``: the FastAPI application of glmkb's OpenAI-compatible API."""

from __future__ import annotations

import anyio
from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.guard import RequestGuard
from app.api.routes import Pools, add_routes
from app.services import Services

__all__ = ["STREAM_THREADS", "create_app"]

# Threads that step generation streams. Streams waiting for a busy model each hold one, so they
# get their own pool: they never starve the pool that serves the other endpoints.
STREAM_THREADS = 64


def create_app(services: Services, *, served_on: str | None = None) -> FastAPI:
    """The FastAPI application serving ``services`` (see ``app.api``); ``served_on``: the address the
    server listens on (a loopback one turns the guard's Host check on)."""
    app = FastAPI(title="glmkb API", version="1", docs_url="/docs", redoc_url=None)
    app.state.services = services
    install_error_handlers(app)
    pools = Pools(
        streams=anyio.CapacityLimiter(STREAM_THREADS),
        kb=anyio.CapacityLimiter(services.settings.api.kb_workers),
        listing=anyio.CapacityLimiter(2),
    )

    # Outermost: refused requests cost their headers only (no body read, no parsing).
    app.add_middleware(
        RequestGuard,
        api_key=lambda: services.api_key,
        key_env=services.settings.api.api_key_env,
        max_body_bytes=services.settings.api.max_body_bytes,
        served_on=served_on,
        allowed_hosts=services.settings.api.allowed_hosts,
    )
    add_routes(app, services, pools)
    return app
