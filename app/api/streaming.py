"""Drive blocking generators (model streams) from async code: step them on worker threads, close
them on the thread when the client goes away, so generation never outlives its client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

__all__ = ["ClosingStreamingResponse", "SSE_HEADERS", "event_stream", "iterate_in_thread"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PING_NEVER_S = 24 * 3600
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


class ClosingStreamingResponse(EventSourceResponse):
    """sse-starlette's ``EventSourceResponse`` (each item one ``data:`` event, ``\n\n``-framed)
    that always closes its body iterator, however the response ends (finished, client gone,
    server shutting down), so generation never outlives its client."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def event_stream(
    items: Iterator[str], limiter: anyio.CapacityLimiter, *, on_gone: Callable[[], None] | None = None
) -> ClosingStreamingResponse:
    """Server-sent events of ``items`` (each an event's ``data``), stepped on worker threads.

    No keep-alive pings: OpenAI clients expect only ``data:`` events, and a stream's first
    event (the assistant role) goes out before the model starts. ``on_gone`` runs as soon as
    the client hangs up, before the running step ends (a whole-book answer's Stop event: its
    batched map step would otherwise run to its end before the stream is closed).
    """

    async def gone(_message: Any) -> None:
        if on_gone is not None:
            on_gone()

    return ClosingStreamingResponse(
        iterate_in_thread(items, limiter), headers=SSE_HEADERS, sep="\n", ping=PING_NEVER_S,
        client_close_handler_callable=gone,
    )


async def collect_unless_disconnected(
    items: Iterator[Any],
    limiter: anyio.CapacityLimiter,
    is_disconnected: Any,
    *,
    poll_s: float = 0.25,
    on_gone: Callable[[], None] | None = None,
) -> list[Any] | None:
    """All of ``items`` (stepped on worker threads), or None once the client has hung up: its
    generator is then closed on the thread, which stops the model within a token (issue 20 #8:
    a non-streaming KB chat whose client left kept the model busy; the next request waited 359 s)."""
    collected: list[Any] = []
    try:
        await _collect(items, limiter, is_disconnected, poll_s, collected, on_gone)
    except BaseException as e:  # anyio wraps errors of a task group: pass on the one that happened
        inner = getattr(e, "exceptions", None)
        if inner and len(inner) == 1 and isinstance(inner[0], Exception):
            if isinstance(inner[0], _Gone):
                return None
            raise inner[0] from None
        if isinstance(e, _Gone):
            return None
        raise
    return collected


class _Gone(Exception):
    """The client hung up (internal to ``collect_unless_disconnected``)."""



async def _collect(
    items: Iterator[Any],
    limiter: anyio.CapacityLimiter,
    is_disconnected: Any,
    poll_s: float,
    collected: list[Any],
    on_gone: Callable[[], None] | None,
) -> None:
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while not await is_disconnected():
                await anyio.sleep(poll_s)
            if on_gone is not None:
                on_gone()  # ends a step that would not stop by being closed (a batched map)
            raise _Gone  # cancels the collecting below, which closes the generator on its thread

        group.start_soon(watch)
        async for item in iterate_in_thread(items, limiter):
            collected.append(item)
        group.cancel_scope.cancel()
