"""``create_app(services)``: the FastAPI application of glmkb's OpenAI-compatible API."""

from __future__ import annotations

import hmac
from typing import Any

import anyio
from fastapi import FastAPI, Request

from app.api.errors import APIError, install_error_handlers
from app.api.routes import Pools, add_routes
from app.services import Services

__all__ = ["STREAM_THREADS", "create_app"]

# Threads that step generation streams. Streams waiting for a busy model each hold one, so they
# get their own pool: they never starve the pool that serves the other endpoints.
STREAM_THREADS = 64


def create_app(services: Services) -> FastAPI:
    """The FastAPI application serving ``services`` (see ``app.api``)."""
    app = FastAPI(title="glmkb API", version="1", docs_url="/docs", redoc_url=None)
    app.state.services = services
    install_error_handlers(app)
    pools = Pools(streams=anyio.CapacityLimiter(STREAM_THREADS), kb=anyio.CapacityLimiter(services.settings.api.kb_workers))

    async def require_key(request: Request) -> None:
        expected = services.api_key
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer KEY' with the key the "
                f"server reads from ${services.settings.api.api_key_env}",
                code="invalid_api_key",
            )

    add_routes(app, services, pools, dependencies=[require_key])
    return app


