"""The API's error edge: every failure answers in OpenAI's JSON shape
``{"error": {"message", "type", "param", "code"}}`` with the status its kind maps to.

``configs.errors`` kinds map by ``http_status_for`` (``BadInput`` 400, ``NotFound`` 404,
``Unavailable`` 503, ``UpstreamError`` its upstream 4xx, else 502); ``app.errors`` kinds add
their ``param``/``code``. Unexpected errors say only "internal server error" (traceback in
the log). ``error_event`` is the same body as one SSE event, for failures mid-stream.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import bilingual_text
from configs.errors import GlmkbError, http_status_for
from kb import EmbeddingModelError
from llm import LLMServerError

__all__ = ["APIError", "error_body", "error_event", "error_response", "install_error_handlers", "status_of"]

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def status_of(error: BaseException) -> int:
    """The HTTP status for ``error`` (``configs.errors.http_status_for`` plus two older kinds)."""
    if isinstance(error, APIError):
        return error.status
    if isinstance(error, EmbeddingModelError) and not isinstance(error, GlmkbError):
        return 503  # the KB's embedding model is missing: not the client's fault
    if isinstance(error, LLMServerError) and not isinstance(error, GlmkbError):
        return 502  # an upstream failure without a status (an UpstreamError carries its 4xx)
    return http_status_for(error)


def as_api_error(error: BaseException) -> APIError:
    """``error`` as an ``APIError``: its status, its one-line English message, param and code."""
    if isinstance(error, APIError):
        return error
    status = status_of(error)
    if status >= 500 and not isinstance(error, (GlmkbError, EmbeddingModelError, LLMServerError)):
        return APIError(500, "internal server error; see the server log")
    _, message = bilingual_text(error)
    code = getattr(error, "code", None)
    if code is None and isinstance(error, EmbeddingModelError):
        code = "embedding_unavailable"
    if code is None and isinstance(error, LLMServerError):
        code = "upstream_error"
    return APIError(status, message, param=getattr(error, "param", None), code=code)


def error_body(error: BaseException) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for ``error``."""
    api_error = as_api_error(error)
    return api_error.status, api_error.body()


def error_response(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse(APIError(status, message, **fields).body(), status_code=status)


def error_event(error: BaseException) -> dict[str, Any]:
    """The in-stream error payload OpenAI clients raise on (the HTTP status is already 200)."""
    if not isinstance(error, (GlmkbError, APIError, ValueError, OSError)):
        log.error("generation failed mid-stream", exc_info=error)
    return error_body(error)[1]


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """``("messages: Field required; ...", "messages")`` from pydantic's errors."""
    parts: list[str] = []
    first_param: str | None = None
    for item in error.errors():
        if item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON ({reason})".replace(" ()", ""), None
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        if not loc and item.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return "the request body must be a JSON object", None
        param = ".".join(loc) or None
        first_param = first_param or param
        msg = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{param}: {msg}" if param else msg)
    return "; ".join(parts) or "invalid request", first_param


# Kinds answered by Starlette's ``ExceptionMiddleware``; any other reaches its outermost middleware.
ANSWERED_KINDS: tuple[type[Exception], ...] = (APIError, GlmkbError, ValueError, OSError)


def closing_headers(error: Exception) -> dict[str, str] | None:
    """``Connection: close`` for an unexpected error: Starlette's outermost middleware re-raises it after
    our 500 and uvicorn then drops the connection, so a client that kept it alive got "connection reset"
    on its next request. Told to close, the client opens a new connection."""
    return None if isinstance(error, ANSWERED_KINDS) else {"Connection": "close"}


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's JSON shape; unexpected ones say only 'internal error'."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path} (the API lives under /v1; see /docs)"
        return JSONResponse(
            APIError(exc.status_code, message).body(),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _any(request: Request, exc: Exception) -> JSONResponse:
        status, body = error_body(exc)
        if status >= 500 and not isinstance(exc, (GlmkbError, APIError)):
            log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        else:
            log.info("%s %s: %s", request.method, request.url.path, body["error"]["message"])
        return JSONResponse(body, status_code=status, headers=closing_headers(exc))

    # Starlette hands ``Exception`` to its outermost middleware (which re-raises after
    # answering), so the kinds that are answers, not crashes, are registered one by one.
    for kind in (*ANSWERED_KINDS, Exception):
        app.add_exception_handler(kind, _any)


def sse_data(payload: dict[str, Any]) -> str:
    """One payload as JSON text for an SSE ``data:`` field (non-ASCII kept as is)."""
    return json.dumps(payload, ensure_ascii=False)
