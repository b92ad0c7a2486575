"""Drive blocking generators (model streams) from async code: step them on worker threads, close
them on the thread when the client goes away, so generation never outlives its client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["ClosingStreamingResponse", "SSE_HEADERS", "event_stream", "iterate_in_thread"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = object()


async def iterate_in_thread(items: Iterator[Any], limiter: anyio.CapacityLimiter) -> AsyncIterator[Any]:
    """Step a blocking generator on worker threads; closing this (or cancelling) closes it there."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, items, _DONE, limiter=limiter)
            if item is _DONE:
                return
            yield item
    finally:
        # No thread is inside the generator now (run_sync waits for it even when cancelled);
        # closing it stops the model within a token. Shielded: runs even on cancellation.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(items.close, limiter=limiter)  # type: ignore[attr-defined]


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that always closes its body iterator, however the response ends
    (finished, client gone, server shutting down), so generation never outlives its client."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def event_stream(items: Iterator[str], limiter: anyio.CapacityLimiter) -> ClosingStreamingResponse:
    return ClosingStreamingResponse(
        iterate_in_thread(items, limiter), media_type="text/event-stream", headers=SSE_HEADERS
    )
