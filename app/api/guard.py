"""A pure ASGI middleware that refuses requests on their headers, before any body is read.

Issue 20 #5: the API read and parsed whole bodies before checking the key, with no size
limit (8 unauthenticated 100 MB POSTs took RSS from 767 to 1,874 MiB before each got its 401).
Here a ``/v1`` request without the right ``Authorization: Bearer KEY`` gets its 401 from the
headers alone, a declared ``Content-Length`` over ``api.max_body_bytes`` gets 413 at once, and
a body that streams past the limit (chunked) is cut off with 413 as soon as it does.

The size limit holds outside ``/v1`` too (no key needed there): in ``glmkb serve`` the web UI's
Gradio routes read and parse a whole JSON body before their login check, so a 100 MB POST to
``/gradio_api/queue/join`` without a login cost ~370 MiB before its 401. Multipart uploads there
pass on to the UI's own ``UploadGuard`` (``ui.max_upload_files`` files of ``ui.max_upload_mb``).

A server listening on a loopback address (the default, 127.0.0.1) answers only requests whose
``Host`` names a loopback host (``localhost``, ``127.0.0.1:8000``, ``[::1]``): DNS rebinding lets a
web page the user opens point its own name at 127.0.0.1 and read a keyless local server's answers
and documents from the browser (Ollama's CVE-2024-28224); such a request names the page's host.
``api.allowed_hosts`` names more hosts to answer (a reverse proxy on this machine passing its own).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import is_loopback

__all__ = ["RequestGuard", "is_loopback_host"]


class BodyTooLarge(HTTPException):
    """Raised inside ``receive`` when a streamed body passes the limit (FastAPI passes
    ``HTTPException`` on while parsing, so the error edge answers 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class RequestGuard:
    """Key check on ``/v1`` and the body-size limit, both before the app sees the request; on a
    server ``served_on`` a loopback address, the ``Host`` check too (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, api_key: Callable[[], str | None], key_env: str, max_body_bytes: int,
                 served_on: str | None = None, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        self.api_key = api_key
        self.key_env = key_env
        self.max_body_bytes = max_body_bytes
        self.loopback_only = served_on is not None and is_loopback_host(served_on)
        self.allowed_hosts = frozenset(host_name(h) for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.loopback_only and not self._host_ok(headers.get(b"host", b"").decode("latin-1")):
            await _answer(send, 403, "this server listens on a loopback address and answers requests to localhost or "
                          "127.0.0.1 only (the Host header named another host); name a local reverse proxy's host "
                          "in api.allowed_hosts, or listen on the network's address", code="host_not_allowed")
            return
        on_api = scope["path"].startswith("/v1")  # else /health, /docs or a mounted web UI (its own login)
        if not on_api and _is_multipart(headers):  # the mounted web UI's uploads: its UploadGuard bounds them
            await self.app(scope, receive, send)
            return
        if on_api and not self._key_ok(headers.get(b"authorization", b"")):
            await _answer(send, 401, "missing or invalid API key: send 'Authorization: Bearer KEY' with the key "
                          f"the server reads from ${self.key_env}", code="invalid_api_key")
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _answer(send, 413, self._too_large(), code="request_too_large")
            return
        await self._call_counting(scope, receive, send)

    def _host_ok(self, host: str) -> bool:
        return is_loopback_host(host) or host_name(host) in self.allowed_hosts

    def _key_ok(self, header: bytes) -> bool:
        expected = self.api_key()
        if expected is None:
            return True
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), expected.encode())

    def _too_large(self) -> str:
        return (f"the request body is larger than {self.max_body_bytes} bytes (api.max_body_bytes); "
                "send less text per request")

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self._too_large())
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:  # raised outside FastAPI's body parsing (a streaming endpoint)
            if not started:
                await _answer(send, 413, self._too_large(), code="request_too_large")


def host_name(host: str) -> str:
    """``host`` (a ``Host`` header or a bind address) without its port or IPv6 brackets, lower case."""
    name = host.strip().lower()
    if name.startswith("["):
        return name[1:].partition("]")[0]
    return name.partition(":")[0] if name.count(":") == 1 else name


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a bind address, or a ``Host`` header with its port) names this machine's
    loopback (``app.auth.is_loopback``: localhost, 127.0.0.0/8, ::1)."""
    return is_loopback(host_name(host))


def _is_multipart(headers: dict[bytes, bytes]) -> bool:
    """Whether a request's body is a multipart form (an upload)."""
    return headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")


async def _answer(send: Send, status: int, message: str, *, code: str) -> None:
    """An OpenAI-shaped JSON error, sent without reading the request body."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body.encode()})
