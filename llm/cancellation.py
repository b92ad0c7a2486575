"""A cancel scope: stop every local generation started inside it when its event is set.

A streamed generation stops when its consumer closes the stream. A call that does not stream
(a summarizer's batched map step, ``invoke``) returns only at the end, so nothing can close it;
code that drives such calls on behalf of a user (the web UI's Stop button) runs them inside
``cancel_scope(event)`` and sets ``event`` to end them within a token. Async code that runs such
blocking work on a thread does it with ``run_cancellable``: cancelling the awaiting task then
stops the work's generations too, instead of leaving the model busy to the end. A LangChain
runnable streamed through ``cancellable_stream`` stops its generations when its consumer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from llm.async_stream import ASYNC_EXECUTOR

T = TypeVar("T")
_SCOPE: ContextVar[tuple[threading.Event, ...]] = ContextVar("glmkb_cancel_scope", default=())


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[threading.Event]:
    """Generations started in this context (this thread, or tasks and executors that copy the
    context, as LangChain's do) stop once ``event`` is set. Scopes nest: an inner scope does not
    hide an outer one (either event stops them)."""
    events = _SCOPE.get()
    token = _SCOPE.set(events if event in events else (*events, event))
    try:
        yield event
    finally:
        _SCOPE.reset(token)


def current_cancel_events() -> tuple[threading.Event, ...]:
    """The events of every enclosing scope, outermost first."""
    return _SCOPE.get()


def current_cancel_event() -> threading.Event | None:
    """The innermost scope's event, if any."""
    events = _SCOPE.get()
    return events[-1] if events else None


async def run_cancellable(work: Callable[[threading.Event], T], *, cancel: threading.Event | None = None) -> T:
    """``work(cancel)`` on a worker thread, in a copy of this context and inside ``cancel_scope(cancel)`` (so an
    enclosing scope reaches it too). Cancelling the awaiting task sets ``cancel`` (its generations stop within a
    token) and waits until the work has ended, the model free, before re-raising. ``cancel`` (default: a new
    event) may be shared by several calls, e.g. each step of one stream."""
    cancel = cancel if cancel is not None else threading.Event()

    def scoped() -> T:
        with cancel_scope(cancel):
            return work(cancel)

    future = asyncio.wrap_future(ASYNC_EXECUTOR.submit(contextvars.copy_context().run, scoped))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(BaseException):  # its own error, or cancelled again while it ends
            await asyncio.shield(future)
        raise


def cancellable_stream(runnable: Any, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
    """``runnable.stream(input, config, **kwargs)`` whose local generations end within a token once the
    consumer stops early (``break``, ``close()``, the generator dropped).

    Why: a closed LCEL stream such as ``prompt | llm | StrOutputParser()`` does not stop the model.
    LangChain's transform steps (the parser) take the close as the end of their output and then read
    the rest of their input for tracing (langchain-core 1.8, ``_transform_stream_with_config``), so the
    model generated to ``max_new_tokens`` for nobody (measured on the tiny model: every forced token
    after a ``break`` at the third piece). The async ``astream`` closes its steps and needs no help.
    Every step runs in one context holding a cancel scope whose event the close sets first."""
    stop = threading.Event()
    context = contextvars.copy_context()
    context.run(_SCOPE.set, (*_SCOPE.get(), stop))
    stream = context.run(runnable.stream, input, config, **kwargs)
    try:
        while True:
            try:
                chunk = context.run(next, stream)
            except StopIteration:
                return
            yield chunk
    finally:
        stop.set()
        context.run(stream.close)
