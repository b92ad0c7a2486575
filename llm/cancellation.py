"""A cancel scope: stop every local generation started inside it when its event is set.

A streamed generation stops when its consumer closes the stream. A call that does not stream
(a summarizer's batched map step, ``invoke``) returns only at the end, so nothing can close it;
code that drives such calls on behalf of a user (the web UI's Stop button) runs them inside
``cancel_scope(event)`` and sets ``event`` to end them within a token.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar

_SCOPE: ContextVar[threading.Event | None] = ContextVar("glmkb_cancel_scope", default=None)


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[threading.Event]:
    """Generations started in this context (this thread, or tasks and executors that copy the
    context, as LangChain's do) stop once ``event`` is set."""
    token = _SCOPE.set(event)
    try:
        yield event
    finally:
        _SCOPE.reset(token)


def current_cancel_event() -> threading.Event | None:
    """The innermost scope's event, if any."""
    return _SCOPE.get()
