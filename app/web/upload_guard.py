"""``UploadGuard``: an ASGI middleware that bounds every multipart request to the Gradio app.

Gradio's own ``/gradio_api/upload`` route (and ``/gradio_api/component_server``) parse up to
1,000 files per request, a number hard-coded in ``gradio.route_utils``; ``max_file_size`` only
bounds each file. Issue 20 #11 measured 200 MB stored in ~1 s and 1,000 files in one request
before any glmkb handler ran. The guard refuses, before the body is read, a request whose
declared size exceeds ``max_files`` files of ``max_file_bytes``; and while the body streams in,
it counts the multipart parts (boundary delimiters) and the bytes, and stops a request at the
first part past the limit, before that part reaches Gradio's parser.

The stop is a ``MultiPartException`` raised from ``receive``: Gradio's parser then deletes the
request's temporary files and answers with its message; the guard makes the status 413.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UploadGuard", "UploadRefused"]

# Parts a request may carry besides its files (component_server sends a few form fields).
EXTRA_PARTS = 8
# Bytes of multipart framing allowed per part (headers, boundaries) on top of the files.
PART_OVERHEAD = 16 * 1024


class UploadRefused(MultiPartException):
    """An upload over the per-request limits (Gradio's parser cleans up on this class)."""


class UploadGuard:
    """Refuse multipart requests with more than ``max_files`` files or more bytes than they allow."""

    def __init__(self, app: ASGIApp, *, max_files: int, max_file_bytes: int) -> None:
        self.app = app
        self.max_files = max_files
        self.max_bytes = max_files * max_file_bytes + (max_files + EXTRA_PARTS) * PART_OVERHEAD
        self.max_file_mib = max_file_bytes / 2**20

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not headers.get("content-type", "").lower().startswith("multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await PlainTextResponse(self.too_large(), status_code=413)(scope, receive, send)
            return
        await self._guarded(scope, receive, send, boundary=_boundary(headers.get("content-type", "")))

    def too_many(self) -> str:
        return (f"一次最多上传 {self.max_files} 个文件 / at most {self.max_files} files per upload "
                "(ui.max_upload_files); upload fewer at a time")

    def too_large(self) -> str:
        return (f"上传过大：一次最多 {self.max_files} 个文件、每个 {self.max_file_mib:g} MB / upload too large: "
                f"at most {self.max_files} files of {self.max_file_mib:g} MB each (ui.max_upload_files, ui.max_upload_mb)")

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, *, boundary: bytes | None) -> None:
        delimiter = b"--" + boundary if boundary else None
        # Gradio's upload route takes only files; other multipart routes a few form fields too.
        max_parts = self.max_files + (0 if scope["path"].rstrip("/").endswith("/upload") else EXTRA_PARTS)
        seen = parts = 0
        tail = b""
        refused: str | None = None
        started = False

        async def counted_receive() -> Message:
            nonlocal seen, parts, tail, refused
            message = await receive()
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            seen += len(body)
            if delimiter is not None:
                window = tail + body
                parts += window.count(delimiter)  # the last delimiter closes the body
                tail = window[-(len(delimiter) - 1):]
            if parts > max_parts + 1:  # N parts: N opening delimiters and the closing one
                refused = self.too_many()
            elif seen > self.max_bytes:
                refused = self.too_large()
            if refused:
                raise UploadRefused(refused)
            return message

        async def status_413(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if refused:
                    message = {**message, "status": 413}
            await send(message)

        try:
            await self.app(scope, counted_receive, status_413)
        except UploadRefused:
            if started:
                raise
            await PlainTextResponse(refused or self.too_many(), status_code=413)(scope, receive, send)


def _boundary(content_type: str) -> bytes | None:
    """The multipart boundary of a Content-Type header (None when it names none)."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"').encode("latin-1")
    return None
