"""Drive a blocking chunk generator from async code, stopping generation on close or cancel.

``ChatGLM`` (an LLM) and ``ChatGLMChat`` (a chat model) both stream from one blocking
generator that runs ``generate`` on the model's worker thread; ``AsyncChunkStream`` is their one
async face.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_DONE = object()
# Threads that pull chunks for astream; generous so that streams waiting for a busy model
# never starve the one that is generating.
ASYNC_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="glmkb-astream")


class AsyncChunkStream(Generic[T]):
    """Async iterator over a blocking generator whose ``next`` runs on a thread.

    Not an ``async def`` generator on purpose: LangChain's ``astream`` does not close the
    inner stream when its caller stops early, so dropping this object (``__del__``) must stop
    generation by itself (``cancel`` is the generation's cancel event); an explicit ``aclose``
    or task cancellation also waits until the model is free. ``on_item`` (e.g. a callback
    manager's ``on_llm_new_token``) is awaited for each item before it is handed on. Each
    ``next`` runs in the context this stream was made in, so an ``llm.cancel_scope`` around an
    ``astream`` reaches the generation.
    """

    def __init__(
        self,
        items: Iterator[T],
        cancel: threading.Event,
        on_item: Callable[[T], Awaitable[Any]] | None = None,
    ) -> None:
        self._items = items
        self._cancel = cancel
        self._on_item = on_item
        self._pending: concurrent.futures.Future[Any] | None = None
        self._closed = False
        self._context = contextvars.copy_context()

    def __aiter__(self) -> AsyncChunkStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        self._pending = ASYNC_EXECUTOR.submit(self._context.run, next, self._items, _DONE)
        try:
            item = await asyncio.wrap_future(self._pending)
        except BaseException:  # generation failed, or this task was cancelled
            await self.aclose()
            raise
        if item is _DONE:
            await self.aclose()
            raise StopAsyncIteration
        if self._on_item is not None:
            await self._on_item(item)
        return item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel.set()
        closing = ASYNC_EXECUTOR.submit(close_when_idle, self._items, self._pending)
        try:
            await asyncio.shield(asyncio.wrap_future(closing))
        except asyncio.CancelledError:
            pass  # cancelled again while cleaning up: the closer still finishes on its thread

    def __del__(self) -> None:
        self._cancel.set()


def close_when_idle(items: Iterator[Any], pending: concurrent.futures.Future[Any] | None) -> None:
    """Close a generator once no thread is inside it (a ``next`` may still be running)."""
    if pending is not None:
        concurrent.futures.wait([pending])
    items.close()  # type: ignore[attr-defined]
